"""What every benchmark prints and records: a table, one ``RESULT`` line, and a dated section in BENCHMARKS.md
naming the machine and the command line."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_BENCHMARKS = Path("BENCHMARKS.md")
NOT_YET_HEADING = "## Not yet measured"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model, logical cores, RAM, and the GPU if torch sees one."""
    import psutil

    info: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count() or 0,
                            "ram_gib": round(psutil.virtual_memory().total / 2**30, 1), "gpu": None}
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    except Exception:  # noqa: BLE001 - no torch or no driver: no GPU
        pass
    return info


def machine_line(info: dict[str, Any] | None = None) -> str:
    info = info or machine_info()
    gpu = info["gpu"] or "no GPU"
    return f"{info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, {gpu}"


def command_line(argv: list[str] | None = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    return "sonic-serve " + " ".join(shlex.quote(a) for a in argv)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def result_line(values: dict[str, Any]) -> str:
    """``RESULT k=v k=v``: values are single tokens (no spaces), floats with 4 significant digits."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "1" if value else "0"
        elif isinstance(value, float):
            text = f"{value:.4g}"
        else:
            text = str(value)
        if not re.fullmatch(r"[A-Za-z0-9_]+", key) or not text or re.search(r"\s", text):
            raise ValueError(f"bad RESULT item {key}={text!r}")
        parts.append(f"{key}={text}")
    return "RESULT " + " ".join(parts)


def parse_result(text: str) -> dict[str, str]:
    """The key/value pairs of the last ``RESULT`` line in ``text``."""
    lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise ValueError("no RESULT line")
    return dict(item.split("=", 1) for item in lines[-1].split()[1:])


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def add(self, *row: Any) -> None:
        self.rows.append(list(row))

    def text(self) -> str:
        cells = [self.columns] + [[fmt(c) for c in row] for row in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        lines = [self.title, "-" * len(self.title)]
        for n, row in enumerate(cells):
            lines.append("  ".join(c.rjust(w) if n else c.ljust(w) for c, w in zip(row, widths, strict=True)))
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |", "|" + " --- |" * len(self.columns)]
        lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclass
class Report:
    """One benchmark's output. ``key`` names its section in BENCHMARKS.md (a rerun replaces it)."""

    key: str
    heading: str
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    exit_code: int = 0
    load: tuple[float, float] | None = None     # 1-minute load average at start and end (set by ``finish``)

    def print(self) -> None:
        for table in self.tables:
            print()
            print(table.text())
        if self.notes:
            print()
            for note in self.notes:
                print(f"- {note}")
        print()
        print(result_line(self.result), flush=True)

    def section(self, argv: list[str] | None = None, info: dict[str, Any] | None = None,
                date: str | None = None) -> str:
        date = date or _dt.date.today().isoformat()
        parts = [f"<!-- bench:{self.key} -->", f"## {date} — {self.heading}", "",
                 f"Machine: {machine_line(info)}. Command: `{command_line(argv)}`."]
        if self.load is not None:
            parts[-1] += (f" Load average (1 min) at start {self.load[0]:.1f}, at end {self.load[1]:.1f} "
                          "(other work on this machine inflates every latency).")
        for table in self.tables:
            parts += ["", f"**{table.title}**", "", table.markdown()]
        if self.notes:
            parts.append("")
            parts += [f"- {note}" for note in self.notes]
        parts += ["", f"`{result_line(self.result)}`", f"<!-- /bench:{self.key} -->"]
        return "\n".join(parts) + "\n"


def record_section(path: str | Path, key: str, section: str) -> None:
    """Put ``section`` into the benchmarks file: replacing the previous section with the same key, else
    before the "Not yet measured" list, else at the end. Other sections are left as they are."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks and measurements\n"
    block = re.compile(rf"<!-- bench:{re.escape(key)} -->.*?<!-- /bench:{re.escape(key)} -->\n?", re.S)
    if block.search(text):
        text = block.sub(lambda _: section, text, count=1)
    elif NOT_YET_HEADING in text:
        head, tail = text.split(NOT_YET_HEADING, 1)
        text = head.rstrip("\n") + "\n\n" + section + "\n" + NOT_YET_HEADING + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def finish(report: Report, args: Any, argv: list[str] | None = None, load_at_start: float | None = None) -> None:
    """Print the report; unless ``--no-record``, write its section to ``--benchmarks-file``."""
    if load_at_start is not None:
        report.load = (load_at_start, load_average())
        print(f"load average (1 min): {report.load[0]:.1f} at start, {report.load[1]:.1f} at end")
    report.print()
    if not getattr(args, "no_record", False):
        target = Path(getattr(args, "benchmarks_file", None) or DEFAULT_BENCHMARKS)
        record_section(target, report.key, report.section(argv))
        print(f"recorded in {target}", file=sys.stderr)
