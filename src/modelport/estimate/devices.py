"""The machines `estimate` checks a model against: named devices and the memory one process can use on each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UnsupportedError
from ..core.sizes import parse_size

GiB = 1 << 30


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    memory: int          # nominal bytes
    usable: int          # what one process can really use for the model (see DEVICES)
    kind: str            # "gpu", "cpu", "unified", "phone"


#: Named devices. Usable memory: a CUDA GPU loses about 1 GiB to the context and the runtime; a 16 GiB PC keeps a
#: quarter for the OS and other programs; Apple GPUs may use about two thirds of unified memory on 16 GiB machines
#: (Metal's recommendedMaxWorkingSetSize); a phone gives one app about half of its RAM.
DEVICES = {d.name: d for d in (
    Device("cpu-16gb", "a PC with 16 GiB of RAM", 16 * GiB, 12 * GiB, "cpu"),
    Device("rtx3090", "NVIDIA RTX 3090 (24 GiB)", 24 * GiB, 23 * GiB, "gpu"),
    Device("a100-80gb", "NVIDIA A100 80 GB", 80 * GiB, 79 * GiB, "gpu"),
    Device("m2-16gb", "Apple M2 with 16 GiB unified memory", 16 * GiB, 16 * GiB * 2 // 3, "unified"),
    Device("phone-8gb", "a phone with 8 GiB of RAM", 8 * GiB, 4 * GiB, "phone"),
)}


def parse_memory(text: str | int) -> int:
    """'12GB' (decimal), '16GiB' (binary) -> bytes; the same reader as `convert --shard-size`."""
    size = parse_size(text)
    if size < 10**6:
        raise UnsupportedError(f"memory size {text!r} is under 1 MB; write a unit, e.g. 12GB or 16GiB")
    return size


def device_for(device: str | None = None, memory: str | int | None = None) -> Device | None:
    """A named device, or a custom one with `memory` (all of it usable: the user says what they have)."""
    if memory is not None:
        size = parse_memory(memory)
        return Device("custom", f"{size / 1e9:.1f} GB of memory", size, size, "custom")
    if device is None:
        return None
    key = device.strip().lower()
    if key not in DEVICES:
        raise UnsupportedError(f"unknown device {device!r}; known: {', '.join(DEVICES)} (or use --memory 12GB)")
    return DEVICES[key]


def fits(need: int, device: Device | None) -> bool | None:
    return None if device is None else need <= device.usable


def cpu_has_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """avx512_bf16 or amx_bf16 in /proc/cpuinfo: the CPUs where bf16 autocast is faster than fp32 (elsewhere it
    is several times slower, so training there runs in fp32)."""
    try:
        flags = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))
