"""The defect table dock: counts per class on top, one row per defect below, Export CSV.

Clicking a defect row calls ``on_select(row)`` with that row of the table (a pandas Series);
the Defect segmenter widget uses it to centre the viewer on the defect.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_microml.defects.segment import COLUMNS
from napari_microml.io.writer import write_defects_csv

MIN_ROWS = 6  # the defect list keeps room for this many rows, even in a crowded dock

# segment_defects' table less what "class" and "source" already say; a stack's frame after class
HIDDEN = ("class_id", "column_z")
SHOWN = tuple(c for c in (*COLUMNS[:2], "frame", *COLUMNS[2:]) if c not in HIDDEN)
PX_ONLY = ("area_px", "nearest_atom_px")  # hidden when the image is calibrated: nm is shown
NM_ONLY = ("area_nm2", "nearest_atom_nm")  # hidden when it is not: they would be all "–"


def _text(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "–" if not np.isfinite(value) else f"{value:.4g}"
    return str(value)


class DefectTableDock(QWidget):
    """Counts per class (and per environment class) and the per-defect table."""

    def __init__(self, on_select: Callable | None = None, parent=None):
        super().__init__(parent)
        self.on_select = on_select
        self.table: Any = None  # the DataFrame on show
        self._export_args: dict = {}
        self.title = QLabel("No defects yet: press Run in the Defect segmenter.")
        self.title.setWordWrap(True)
        self.summary = QTableWidget(0, 3)
        self.summary.setHorizontalHeaderLabels(["class", "count", "per nm²"])
        self.defects = QTableWidget(0, 0)
        self.defects.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.defects.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        self.defects.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.summary.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.defects.setToolTip("Click a defect to centre the view on it.")
        self.export_button = QPushButton("Export CSV…")
        self.export_button.setEnabled(False)
        # counts on the left, the defect list on the right: the dock sits below the canvas, wide
        left, right = QVBoxLayout(), QVBoxLayout()
        for w in (self.title, self.summary, self.export_button):
            left.addWidget(w)
        left.addStretch(1)
        for w in (QLabel("Defects (click to centre the view):"), self.defects):
            right.addWidget(w)
        layout = QHBoxLayout(self)
        layout.addLayout(left, 2)
        layout.addLayout(right, 5)
        for table in (self.summary, self.defects):  # compact rows; the label column numbers them
            rows = cast(QHeaderView, table.verticalHeader())  # never None on a QTableWidget
            rows.setDefaultSectionSize(table.fontMetrics().height() + 6)
            rows.setVisible(False)
        self.defects.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.defects.setMinimumHeight(self._rows_height(self.defects, MIN_ROWS))
        columns = cast(QHeaderView, self.summary.horizontalHeader())
        columns.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.defects.cellClicked.connect(lambda r, _c: self._select(r))
        self.defects.currentCellChanged.connect(lambda r, _c, _pr, _pc: self._select(r))
        self.export_button.clicked.connect(self._on_export_clicked)

    def set_data(
        self,
        table,
        counts,
        *,
        env_counts=None,
        title: str = "",
        provenance=None,
        image: str | None = None,
        pixel_size: float | None = None,
    ) -> None:
        """Show ``table`` (one row per defect) and ``counts`` (class, count, density_per_nm2);
        ``env_counts`` (class, count, unusual) adds the environment classes below."""
        self.table = shown = table.reset_index(drop=True)
        self._export_args = dict(
            counts=counts, provenance=provenance, image=image, pixel_size=pixel_size
        )
        self.title.setText(title)
        rows = [
            (c["class"], int(c["count"]), _text(c["density_per_nm2"])) for _, c in counts.iterrows()
        ]
        if env_counts is not None:
            rows += [
                (f"env {c['class']}", int(c["count"]), f"{int(c['unusual'])} unusual")
                for _, c in env_counts.iterrows()
            ]
        self.summary.clearContents()
        self.summary.setRowCount(len(rows))
        for i, row in enumerate(rows):
            for j, value in enumerate(row):
                self.summary.setItem(i, j, QTableWidgetItem(str(value)))
        self.summary.resizeRowsToContents()
        header = cast(QHeaderView, self.summary.horizontalHeader())
        frame = 2 * self.summary.frameWidth() + header.height()
        self.summary.setFixedHeight(
            min(180, frame + sum(self.summary.rowHeight(i) for i in range(len(rows))))
        )
        unit_free = PX_ONLY if pixel_size else NM_ONLY
        cols = [c for c in SHOWN if c in shown.columns and c not in unit_free]
        self.defects.blockSignals(True)
        self.defects.clear()
        self.defects.setColumnCount(len(cols))
        self.defects.setRowCount(len(shown))
        self.defects.setHorizontalHeaderLabels(cols)
        for i, rec in enumerate(shown[cols].itertuples(index=False)):
            for j, value in enumerate(rec):
                self.defects.setItem(i, j, QTableWidgetItem(_text(value)))
        self.defects.blockSignals(False)
        self.export_button.setEnabled(True)

    @staticmethod
    def _rows_height(table, rows: int) -> int:
        """Pixels a table needs to show its header and ``rows`` rows."""
        return (
            2 * table.frameWidth()
            + table.horizontalHeader().sizeHint().height()
            + rows * table.verticalHeader().defaultSectionSize()
        )

    def _select(self, index: int) -> None:
        if self.table is None or not 0 <= index < len(self.table) or self.on_select is None:
            return
        self.on_select(self.table.iloc[index])

    def export_csv(self, path) -> str:
        """Write the shown table (with its '# ' provenance header) to ``path``."""
        if self.table is None:
            raise ValueError("There is no defect table to export yet: run the segmenter first.")
        return write_defects_csv(path, self.table, **self._export_args)

    def _on_export_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export defect table", "defects.csv", "CSV (*.csv)"
        )
        if path:
            self.title.setText(f"Table written to {self.export_csv(path)}.")
