"""A PNG of enqueue latency over time, fault windows shaded. Standard library only (zlib +
struct): a chart is a few thousand dots and some lines, not worth a plotting dependency.

x: seconds since the history began; y: latency on a log scale (a decade per grid line).
Dots: blue = acknowledged, red = failed, orange = unknown outcome (an operation that never
completed sits on the top edge). Shaded: fault windows, the darker edge marks the start.
"""

from __future__ import annotations

import math
import struct
import zlib

from .checker import FaultWindow, Op

__all__ = ["WIDTH", "HEIGHT", "render_png", "write_plot"]

WIDTH, HEIGHT = 1200, 420
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 34
MIN_LATENCY_S = 1e-4  # 0.1 ms: the floor of the log scale
MAX_POINTS = 2_000_000  # bounds the work on a huge history (dots beyond are skipped evenly)
FONT_SCALE = 2
assert LEFT + RIGHT < WIDTH and TOP + BOTTOM < HEIGHT

WHITE, GRID, AXIS, TEXT = (255, 255, 255), (225, 225, 225), (90, 90, 90), (40, 40, 40)
SHADE, SHADE_EDGE = (255, 224, 210), (235, 150, 120)
COLORS = {"ok": (40, 90, 200), "fail": (215, 40, 40), "info": (240, 150, 20)}

# 3x5 glyphs for axis labels, one string of 15 bits per character (rows top to bottom).
GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "m": "000000111111101",
    "s": "000011110011110", "u": "000000101101111", " ": "000000000000000",
}


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(WHITE) * (width * height))

    def set(self, x: int, y: int, color: tuple[int, int, int]) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = (y * self.width + x) * 3
            self.pixels[i:i + 3] = bytes(color)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: tuple[int, int, int]) -> None:
        x0, x1 = max(0, min(x0, x1)), min(self.width - 1, max(x0, x1))
        row = bytes(color) * (x1 - x0 + 1)
        for y in range(max(0, min(y0, y1)), min(self.height - 1, max(y0, y1)) + 1):
            i = (y * self.width + x0) * 3
            self.pixels[i:i + len(row)] = row

    def text(self, x: int, y: int, text: str, color: tuple[int, int, int] = TEXT) -> None:
        for n, ch in enumerate(text):
            bits = GLYPHS.get(ch, GLYPHS[" "])
            for k, bit in enumerate(bits):
                if bit == "1":
                    px, py = x + (n * 4 + k % 3) * FONT_SCALE, y + (k // 3) * FONT_SCALE
                    self.rect(px, py, px + FONT_SCALE - 1, py + FONT_SCALE - 1, color)

    def png(self) -> bytes:
        stride = self.width * 3
        raw = b"".join(b"\x00" + bytes(self.pixels[y * stride:(y + 1) * stride]) for y in range(self.height))
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)  # 8-bit RGB
        return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6)) \
            + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def render_png(ops: list[Op], windows: list[FaultWindow], duration_s: float) -> bytes:
    enqueues = [op for op in ops if op.f == "enqueue"]
    span = max(duration_s, max((op.end or op.start for op in enqueues), default=0.0), 1.0)
    worst = max((op.latency for op in enqueues if op.latency is not None), default=1.0)
    top_decade = max(0, math.ceil(math.log10(max(worst, MIN_LATENCY_S))))
    low_decade = round(math.log10(MIN_LATENCY_S))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    canvas = Canvas(WIDTH, HEIGHT)

    def px(t: float) -> int:
        return LEFT + int(t / span * (plot_w - 1))

    def py(latency: float) -> int:
        frac = (math.log10(max(latency, MIN_LATENCY_S)) - low_decade) / (top_decade - low_decade)
        return TOP + plot_h - 1 - int(min(1.0, frac) * (plot_h - 1))

    for w in windows:
        stop = span if w.stop is None else w.stop
        canvas.rect(px(w.start), TOP, px(stop), TOP + plot_h - 1, SHADE)
        canvas.rect(px(w.start), TOP, px(w.start), TOP + plot_h - 1, SHADE_EDGE)
    _grid(canvas, span, low_decade, top_decade, px, py, plot_h)
    step = max(1, len(enqueues) // MAX_POINTS)
    for op in enqueues[::step]:
        y = TOP if op.latency is None else py(op.latency)
        x = px(op.start)
        canvas.rect(x, y - 1, x + 1, y, COLORS.get(op.type, COLORS["info"]))
    return canvas.png()


def _grid(canvas: Canvas, span: float, low: int, high: int, px, py, plot_h: int) -> None:
    for decade in range(low, high + 1):
        y = py(10.0 ** decade)
        canvas.rect(LEFT, y, WIDTH - RIGHT - 1, y, GRID)
        canvas.text(4, y - 5, _latency_label(decade))
    step = _nice_step(span)
    t = 0.0
    while t <= span + 1e-9:
        x = px(t)
        canvas.rect(x, TOP + plot_h, x, TOP + plot_h + 4, AXIS)
        label = f"{t:g}s"
        canvas.text(x - len(label) * 4 * FONT_SCALE // 2, TOP + plot_h + 8, label)
        t += step
    canvas.rect(LEFT, TOP, LEFT, TOP + plot_h - 1, AXIS)
    canvas.rect(LEFT, TOP + plot_h - 1, WIDTH - RIGHT - 1, TOP + plot_h - 1, AXIS)


def _latency_label(decade: int) -> str:
    value = 10.0 ** decade
    if value >= 1:
        return f"{value:g}s"
    if value >= 1e-3:
        return f"{value * 1e3:g}ms"
    return f"{value * 1e6:g}us"


def _nice_step(span: float) -> float:
    raw = span / 10
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def write_plot(path: str, ops: list[Op], windows: list[FaultWindow], duration_s: float) -> None:
    with open(path, "wb") as f:
        f.write(render_png(ops, windows, duration_s))
