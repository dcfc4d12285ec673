"""One module per container format; each defines `FORMAT`, its reader and (where it can) its writer."""
