"""Findings and reports: what the scanner says about a file, where, and why.

A finding is one fact a careful reader must know before loading the file: its severity, the import
or construct, where it sits (file, archive member, byte offset) and one sentence of why it matters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SAFE, UNKNOWN, SUSPICIOUS, DANGEROUS = "safe", "unknown", "suspicious", "dangerous"
# `unknown`: content the scanner could not identify or open (an unread file is never called safe);
# worse than safe, milder than any sign of harm.
_RANK = {SAFE: 0, UNKNOWN: 1, SUSPICIOUS: 2, DANGEROUS: 3}


def worst(severities) -> str:
    """The most serious of some severities (`safe` when there are none)."""
    best = SAFE
    for s in severities:
        if _RANK[s] > _RANK[best]:
            best = s
    return best


@dataclass(frozen=True)
class Finding:
    severity: str            # "unknown" | "suspicious" | "dangerous"
    what: str                # the import or construct: "os.system", "zip: bad CRC", ...
    why: str                 # one sentence for a person
    file: str
    member: str | None = None   # archive member / nested location ("archive/data.pkl", "nested pickle @12")
    offset: int | None = None   # byte offset inside the member (or file when member is None)
    count: int = 1              # how many times the same thing occurs at this place
    malformed: bool = False     # a broken structure the format's own reader also refuses (with a sharper message)

    def where(self) -> str:
        parts = [self.file]
        if self.member:
            parts.append(self.member)
        text = ":".join(parts)
        return f"{text} @ byte {self.offset}" if self.offset is not None else text

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FileReport:
    path: str
    kind: str                                   # what the scanner took the file for: "pytorch-zip", "pickle", ...
    findings: list[Finding] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return worst(f.severity for f in self.findings)

    def to_dict(self) -> dict:
        return {"path": self.path, "kind": self.kind, "verdict": self.verdict,
                "findings": [f.to_dict() for f in self.findings]}


@dataclass
class ScanReport:
    files: list[FileReport] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return worst(r.verdict for r in self.files)

    @property
    def findings(self) -> list[Finding]:
        return [f for r in self.files for f in r.findings]

    @property
    def flagged(self) -> bool:
        return self.verdict != SAFE

    @property
    def unknown(self) -> list[FileReport]:
        """Files with content the scanner could not identify or open (wholly or in part)."""
        return [r for r in self.files if any(f.severity == UNKNOWN for f in r.findings)]

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "files": [r.to_dict() for r in self.files]}
