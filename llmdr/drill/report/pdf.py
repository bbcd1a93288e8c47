"""The PDF report (fpdf2, imported lazily): A4, DejaVu fonts with system fallbacks for other scripts, page numbers,
charts embedded, rendered from the same document model as the HTML. Importing this module imports fpdf2 (about
half a second, with numpy and Pillow): :func:`llmdr.drill.report.write_report` loads it only when it writes a PDF."""

from __future__ import annotations

import logging
import unicodedata
from pathlib import Path
from typing import Any

from fpdf import FPDF
from fpdf.enums import WrapMode, XPos, YPos
from fpdf.fonts import FontFace

from llmdr.drill.report.labels import nobreak
from llmdr.drill.report.model import (
    DASH,
    FAIL_RGB,
    FILES,
    PASS_RGB,
    WARN_RGB,
    Table,
    as_dict,
    dig,
    headline_figures,
    sections,
    verdict_of,
)

log = logging.getLogger(__name__)


def _font_paths() -> dict[tuple[str, str], Path]:
    import matplotlib

    base = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return {("dv", ""): base / "DejaVuSans.ttf", ("dv", "B"): base / "DejaVuSans-Bold.ttf",
            ("dv", "I"): base / "DejaVuSans-Oblique.ttf", ("dvmono", ""): base / "DejaVuSansMono.ttf",
            ("dvmono", "B"): base / "DejaVuSansMono-Bold.ttf"}


# Fonts for scripts DejaVu lacks (CJK above all), used when present on the machine (Debian: fonts-noto-cjk,
# fonts-droid-fallback, fonts-wqy-zenhei). Without one, such characters print as "?" in the PDF (the HTML and
# evidence.json keep them).
FALLBACK_FONTS: tuple[str, ...] = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
)


def _clean(s: str, cmaps: list[Any] | None = None) -> str:
    """Printable text for the PDF: control characters out; glyphs no loaded font has shown as '?'."""
    out = []
    for ch in s.replace("\t", " "):
        if ch != "\n" and unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            continue
        if cmaps and ch != "\n" and not any(ord(ch) in c for c in cmaps):
            ch = "?"
        out.append(ch)
    return "".join(out)


class ReportPDF(FPDF):
    """An A4 report page: a footer with the report's title, verdict and "page n of N"; every text goes through
    :meth:`txt`, which drops control characters and prints glyphs no loaded font has (``glyph_maps``) as "?"."""

    def __init__(self, footer_text: str) -> None:
        super().__init__(format="A4")
        self.footer_text = footer_text
        self.glyph_maps: list[Any] = []  # the cmaps of the loaded fonts, set once they are added

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("dv", "", 7.5)
        self.set_text_color(110, 110, 110)
        self.cell(0, 6, self.txt(f"{self.footer_text}  ·  page {self.page_no()} of {{nb}}"), align="C")

    def txt(self, s: Any) -> str:
        return _clean(str(s), self.glyph_maps)


def render_pdf(record: dict, path: Path, images: dict[str, Path] | None = None, *, runbook: str | None = None) -> Path:
    """The PDF report: A4, DejaVu fonts (→, ≤, — and most scripts render), page numbers, charts embedded,
    tables whose long digests wrap inside their cells. ``runbook``: named (as text) when it is in the folder."""
    record = as_dict(record)
    images = images or {}
    verdict = verdict_of(record)
    bundle = record.get("bundle") or dig(record, "scope", "bundle") or DASH
    title = f"DR drill report: {bundle}, drill {record.get('id') or DASH}"

    pdf = ReportPDF(f"{title}  ·  {verdict}")
    pdf.set_margins(14, 14, 14)
    pdf.set_auto_page_break(True, margin=16)
    pdf.set_title(title)
    pdf.set_author("llmdr")
    pdf.set_creator(f"llmdr {record.get('tool_version') or ''}".strip())
    for (family, style), p in _font_paths().items():
        pdf.add_font(family, style, str(p))
    fallbacks = []
    for i, p in enumerate(f for f in FALLBACK_FONTS if Path(f).is_file()):
        try:
            pdf.add_font(f"fallback{i}", "", p)
        except Exception as exc:  # a damaged or unsupported system font must not stop the report
            log.warning("skipping fallback font %s: %s", p, exc)
            continue
        fallbacks.append(f"fallback{i}")
    # mono cells (ids, digests) borrow from DejaVu Sans, then from the system fonts, for glyphs they lack
    pdf.set_fallback_fonts(["dv", *fallbacks], exact_match=False)
    pdf.glyph_maps = [pdf.fonts["dv"].cmap] + [pdf.fonts[f].cmap for f in fallbacks]
    pdf.add_page()
    t = pdf.txt

    # headline: verdict, the failed-over banner, key figures
    pdf.set_font("dv", "B", 16)
    pdf.set_text_color(20, 20, 20)
    pdf.multi_cell(0, 8, t(f"DR drill report: {bundle}"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(2)
    color = PASS_RGB if verdict == "PASS" else FAIL_RGB
    pdf.set_fill_color(*color)
    pdf.set_text_color(255, 255, 255)
    pdf.set_font("dv", "B", 30)
    pdf.cell(0, 18, verdict, align="C", fill=True, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    if record.get("failed_over_at_end"):
        pdf.ln(2)
        pdf.set_fill_color(*FAIL_RGB)
        pdf.set_font("dv", "B", 15)
        pdf.cell(0, 11, "SYSTEM LEFT FAILED OVER", align="C", fill=True, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_font("dv", "", 9)
        pdf.multi_cell(0, 5.5, t("Traffic was still served from the DR region when the drill ended. Fail back "
                                 "(`llmdr failback`) once the primary is healthy; this drill cannot pass."),
                       fill=True, align="C", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(3)
    pdf.set_fill_color(255, 255, 255)
    pdf.set_text_color(20, 20, 20)
    _pdf_table(pdf, Table(["", ""], [[k, nobreak(v)] for k, v in headline_figures(record)], [1, 3], headings=False))

    bottom = pdf.h - pdf.b_margin

    def image_size(name: str) -> tuple[float, float] | None:
        """(width, height) in mm at full text width, or None without that chart."""
        if name not in images:
            return None
        from PIL import Image

        with Image.open(images[name]) as im:
            return pdf.epw, pdf.epw * im.height / im.width

    for sec in sections(record, has_trend=FILES["trend"] in images, runbook=runbook):
        pdf.ln(3)
        first = sec.blocks[0] if sec.blocks else None
        size = image_size(first[1]) if isinstance(first, tuple) and first[0] == "image" else None
        # keep a title with its first lines (or its chart, shrunk to at most 80 % if that makes it fit)
        need = 14 + (0.8 * size[1] if size else 20)
        if pdf.get_y() + need > bottom:
            pdf.add_page()
        pdf.set_font("dv", "B", 13)
        pdf.set_text_color(20, 20, 20)
        pdf.cell(0, 8, t(sec.title), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_draw_color(180, 180, 180)
        pdf.line(pdf.l_margin, pdf.get_y(), pdf.w - pdf.r_margin, pdf.get_y())
        pdf.ln(1.5)
        for block in sec.blocks:
            if isinstance(block, Table):
                _pdf_table(pdf, block)
            elif isinstance(block, tuple) and block[0] == "image":
                size = image_size(block[1])
                if size is None:
                    continue
                w, h = size
                room = bottom - pdf.get_y()
                if h > room:
                    if room >= 0.8 * h:
                        w, h = w * room / h, room
                    else:
                        pdf.add_page()
                pdf.image(str(images[block[1]]), x=pdf.l_margin + (pdf.epw - w) / 2, w=w, h=h)
                pdf.ln(2)
            elif isinstance(block, tuple) and block[0] == "link":
                pdf.set_font("dv", "B", 9.5)
                pdf.multi_cell(0, 5.2, t(f"{block[1]} {block[2]} (in this report folder)"), align="L",
                               new_x=XPos.LMARGIN, new_y=YPos.NEXT)
                pdf.ln(1)
            elif isinstance(block, tuple) and block[0] == "list":
                failing = sec.anchor == "failures" and verdict == "FAIL"
                pdf.set_font("dv", "B" if failing else "", 9.5)
                pdf.set_text_color(*(FAIL_RGB if failing else (20, 20, 20)))
                for item in block[1]:
                    pdf.cell(5, 5.2, "•")
                    pdf.multi_cell(pdf.epw - 5, 5.2, t(item), align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
                pdf.set_text_color(20, 20, 20)
            else:
                pdf.set_font("dv", "", 8.5)
                pdf.set_text_color(70, 70, 70)
                pdf.multi_cell(0, 4.6, t(str(block)), align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
                pdf.set_text_color(20, 20, 20)
                pdf.ln(1)
    pdf.output(str(path))
    return Path(path)


def _pdf_table(pdf: ReportPDF, table: Table) -> None:
    t = pdf.txt
    if table.caption:
        if pdf.get_y() > pdf.h - 40:
            pdf.add_page()
        pdf.set_font("dv", "B", 9.5)
        pdf.set_text_color(60, 60, 60)
        pdf.multi_cell(0, 6, t(table.caption), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_text_color(20, 20, 20)
    size = 8 if len(table.headers) > 3 else 8.5
    pdf.set_font("dv", "", size)
    head = FontFace(family="dv", emphasis="BOLD", size_pt=size, fill_color=(232, 236, 241))
    with pdf.table(col_widths=tuple(table.widths), width=pdf.epw, text_align="LEFT", line_height=size * 0.5,
                   first_row_as_headings=table.headings, headings_style=head, wrapmode=WrapMode.WORD,
                   cell_fill_mode="ROWS" if table.headings else "NONE", cell_fill_color=(246, 247, 249),
                   padding=(0.8, 1.2), borders_layout="HORIZONTAL_LINES" if table.headings else "NONE",
                   v_align="TOP") as tb:
        if table.headings:
            row = tb.row()
            for h in table.headers:
                row.cell(t(h))
        for r in table.rows:
            row = tb.row()
            for i, cell in enumerate(r):
                style = None
                if i == table.status_col and cell in ("PASS", "FAIL", "N/A"):
                    style = FontFace(family="dv", emphasis="BOLD", size_pt=size,
                                     color={"PASS": PASS_RGB, "FAIL": FAIL_RGB}.get(cell, WARN_RGB))
                elif i in table.mono_cols:
                    style = FontFace(family="dvmono", size_pt=size - 0.5)
                elif not table.headings and i == 0:
                    style = FontFace(family="dv", emphasis="BOLD", size_pt=size)
                row.cell(t(cell), style=style)
    pdf.ln(1.5)
