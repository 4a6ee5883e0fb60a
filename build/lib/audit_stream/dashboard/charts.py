"""Charts drawn on the server as inline SVG: no JavaScript, no CDN, readable without a network."""

from __future__ import annotations

import math
from datetime import datetime

from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

__all__ = ["bar_chart", "nice_ceiling"]

WIDTH, HEIGHT = 720, 180
LEFT, RIGHT, TOP, BOTTOM = 56, 8, 12, 28  # margins around the plot area


def nice_ceiling(value: float) -> int:
    """The smallest of 1, 2, 2.5, 5 x 10^n at or above ``value`` (at least 1): a round axis maximum."""
    if value <= 1:
        return 1
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return int(step * magnitude)
    return int(10 * magnitude)  # pragma: no cover


def _axis_label(value: int) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 10_000:
        return f"{value / 1000:g}k"
    return f"{value:,}"


def bar_chart(points: list[tuple[datetime, int]], *, unit: str = "events", title: str = "") -> SafeString:
    """One bar per point (oldest first), with a y axis, gridlines, and a tooltip per bar.

    ``points`` are (minute, value) pairs; the x axis is labelled in minutes before the last one.
    """
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = nice_ceiling(max((v for _, v in points), default=0))
    slot = plot_w / max(len(points), 1)
    gap = min(2.0, slot * 0.2)

    gridlines = [0, top] if top % 2 else [0, top // 2, top]
    grid = format_html_join(
        "",
        '<line class="chart-grid" x1="{}" y1="{}" x2="{}" y2="{}"/>'
        '<text class="chart-axis" x="{}" y="{}" text-anchor="end">{}</text>',
        (
            (LEFT, y, LEFT + plot_w, y, LEFT - 6, f"{float(y) + 4:.1f}", _axis_label(value))
            for value in gridlines
            for y in [f"{TOP + plot_h - value / top * plot_h:.1f}"]
        ),
    )
    bars = []
    for index, (minute, value) in enumerate(points):
        height = value / top * plot_h
        local = timezone.localtime(minute) if timezone.is_aware(minute) else minute
        bars.append(
            format_html(
                '<rect class="chart-bar" x="{}" y="{}" width="{}" height="{}">'
                "<title>{}: {} {}</title></rect>",
                f"{LEFT + index * slot + gap / 2:.1f}",
                f"{TOP + plot_h - height:.1f}",
                f"{max(slot - gap, 1):.1f}",
                f"{height:.1f}",
                local.strftime("%H:%M"),
                f"{value:,}",
                unit,
            )
        )
    count = len(points)
    ticks = format_html_join(
        "",
        '<text class="chart-axis" x="{}" y="{}" text-anchor="middle">{}</text>',
        (
            (f"{LEFT + (count - minutes_ago - 0.5) * slot:.1f}", HEIGHT - 8, label)
            for minutes_ago, label in (
                (count - 1, f"\u2212{count - 1} min"),
                (count // 2, f"\u2212{count // 2} min"),
                (0, "now"),
            )
            if count
        ),
    )
    empty = (
        format_html(
            '<text class="chart-empty" x="{}" y="{}" text-anchor="middle">{}</text>',
            LEFT + plot_w / 2,
            TOP + plot_h / 2,
            "No events folded in this period",
        )
        if not any(v for _, v in points)
        else ""
    )
    return format_html(
        '<svg class="chart" viewBox="0 0 {} {}" role="img" aria-label="{}"'
        ' preserveAspectRatio="xMidYMid meet">'
        '{}<line class="chart-baseline" x1="{}" y1="{}" x2="{}" y2="{}"/>{}{}{}</svg>',
        WIDTH,
        HEIGHT,
        title,
        grid,
        LEFT,
        TOP + plot_h,
        LEFT + plot_w,
        TOP + plot_h,
        mark_safe("".join(bars)),  # each bar built with format_html above
        ticks,
        empty,
    )
