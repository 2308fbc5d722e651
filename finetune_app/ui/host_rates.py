"""Throughput per host of a data-parallel run: each process's share of the global batch.

Filled from TrainReport.hosts (rank 0 gathers every process's numbers at each report); hidden
for a run on one machine. A slow or memory-bound host shows here as a smaller share."""

from __future__ import annotations

from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem, QWidget

COLUMNS = ("Rank", "Host", "Examples / s", "Tokens / s", "Share", "Peak memory")


class HostRatesTable(QTableWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(0, len(COLUMNS), parent)
        self.setObjectName("hostRates")
        self.setHorizontalHeaderLabels(COLUMNS)
        self.verticalHeader().hide()
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.rates: tuple = ()
        self.hide()

    def clear_rates(self) -> None:
        self.rates = ()
        self.setRowCount(0)
        self.hide()

    def show_rates(self, rates) -> None:
        self.rates = tuple(rates)
        total = sum(r.tokens_per_second for r in self.rates) or 1.0
        self.setRowCount(len(self.rates) + 1)
        rows = [(str(r.rank), r.host, f"{r.examples_per_second:,.1f}", f"{r.tokens_per_second:,.0f}",
                 f"{100 * r.tokens_per_second / total:.0f}%", f"{r.peak_memory_gb:.2f} GB") for r in self.rates]
        rows.append(("", f"all {len(self.rates)} hosts", f"{sum(r.examples_per_second for r in self.rates):,.1f}",
                     f"{total:,.0f}", "100%", f"{max((r.peak_memory_gb for r in self.rates), default=0):.2f} GB max"))
        for i, row in enumerate(rows):
            for j, text in enumerate(row):
                item = self.item(i, j)
                if item is None:
                    self.setItem(i, j, QTableWidgetItem(text))
                else:
                    item.setText(text)
        height = self.horizontalHeader().height() + sum(self.rowHeight(i) for i in range(self.rowCount())) + 4
        self.setFixedHeight(min(height, 220))
        self.show()
