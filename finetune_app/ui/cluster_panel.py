"""The "several machines" option: the hosts of a data-parallel run, checked before it starts.

The list is mlx.launch's host file (open and save it as such). "Check hosts" reaches every host
(core.cluster.check) and shows, per row, whether it answers and has Finetune, the model and the
data; a run can start only after a check that passed for the current hosts, model and data.
"""

from __future__ import annotations

import json

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from finetune_app.core.cluster.hosts import BACKENDS, Host, HostList, read_hostfile, write_hostfile

BACKEND_TEXT = {"ring": "Network: Ethernet or Thunderbolt bridge (ring)", "jaccl": "Thunderbolt RDMA (jaccl)",
                "jaccl-ring": "Thunderbolt RDMA ring (jaccl-ring)", "mpi": "MPI (mpirun)", "nccl": "CUDA GPUs (nccl)"}
COLUMNS = ("Rank", "Host (ssh)", "Address", "Status")
OK, BAD, WAIT = QColor("#2ea043"), QColor("#d93025"), QColor("#888888")


def this_machine_address() -> str:
    """The address other machines would reach this one at (no packet is sent)."""
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


class ClusterPanel(QGroupBox):
    changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Train on several machines (data parallel)", parent)
        self.setObjectName("clusterPanel")
        self.setCheckable(True)
        self.setChecked(False)
        self.checks: list = []  # core.cluster.check.HostCheck of the last check
        self._checked_for = None  # (host list, model, data) the checks answer for
        self._task = None
        self._envs: tuple[str, ...] = ()
        self.model = self.data = ""

        self.backend = QComboBox()
        self.backend.setObjectName("clusterBackend")
        for b in BACKENDS:
            self.backend.addItem(BACKEND_TEXT[b], b)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("clusterHosts")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        for i, mode in enumerate((QHeaderView.ResizeMode.ResizeToContents, QHeaderView.ResizeMode.Interactive,
                                  QHeaderView.ResizeMode.Interactive, QHeaderView.ResizeMode.Stretch)):
            header.setSectionResizeMode(i, mode)
        self.table.setColumnWidth(1, 180)
        self.table.setColumnWidth(2, 130)
        self.table.setWordWrap(True)
        self.table.setMinimumHeight(130)
        self.summary = QLabel()
        self.summary.setObjectName("clusterSummary")
        self.summary.setWordWrap(True)

        self.add_button = QPushButton("Add host")
        self.remove_button = QPushButton("Remove")
        self.open_button = QPushButton("Open host file…")
        self.save_button = QPushButton("Save host file…")
        self.check_button = QPushButton("Check hosts")
        self.check_button.setObjectName("clusterCheck")
        self.check_button.setDefault(False)
        buttons = QHBoxLayout()
        for b in (self.add_button, self.remove_button, self.open_button, self.save_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.check_button)

        hint = QLabel("This machine runs rank 0 and keeps the run folder. Every host needs Finetune, and the "
                      "model and data at the same paths; this machine reaches them with ssh (Remote Login).")
        hint.setWordWrap(True)
        hint.setObjectName("clusterHint")
        self.body = QWidget()  # hidden while the option is off: the settings form keeps the room
        layout = QVBoxLayout(self.body)
        layout.setContentsMargins(0, 0, 0, 0)
        outer = QVBoxLayout(self)
        outer.addWidget(self.body)
        self.body.setVisible(False)
        self.toggled.connect(self.body.setVisible)
        row = QHBoxLayout()
        row.addWidget(QLabel("Connection:"))
        row.addWidget(self.backend, 1)
        layout.addWidget(hint)
        layout.addLayout(row)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        layout.addWidget(self.summary)

        self.add_button.clicked.connect(lambda: self.add_host(Host("", ())))
        self.remove_button.clicked.connect(self.remove_selected)
        self.open_button.clicked.connect(self.choose_open)
        self.save_button.clicked.connect(self.choose_save)
        self.check_button.clicked.connect(self.check)
        self.backend.currentIndexChanged.connect(self._edited)
        self.table.itemChanged.connect(self._edited)
        self.toggled.connect(lambda _on: self._edited())
        self.set_host_list(HostList((Host("127.0.0.1", (this_machine_address(),)), Host("", ()))))

    # ---- the list ----------------------------------------------------------------------------
    def host_list(self) -> HostList:
        hosts = []
        for r in range(self.table.rowCount()):
            ssh_item = self.table.item(r, 1)
            ssh = (ssh_item.text() if ssh_item else "").strip()
            ips = (self.table.item(r, 2).text() if self.table.item(r, 2) else "").replace(",", " ").split()
            rdma = tuple(ssh_item.data(Qt.ItemDataRole.UserRole) or ()) if ssh_item else ()  # jaccl, from the file
            if ssh or ips:
                hosts.append(Host(ssh or (ips[0] if ips else ""), tuple(ips), rdma))
        return HostList(tuple(hosts), self.backend.currentData(), self._envs)

    def set_host_list(self, hosts: HostList) -> None:
        self._envs = hosts.envs  # the host file's environment for the ranks, kept as is
        self.table.blockSignals(True)
        self.table.setRowCount(0)
        for h in hosts.hosts:
            self._append_row(h)
        self.table.blockSignals(False)
        i = self.backend.findData(hosts.backend)
        self.backend.setCurrentIndex(max(0, i))
        self._edited()

    def add_host(self, host: Host) -> None:
        self._append_row(host)
        self._edited()

    def _append_row(self, host: Host) -> None:
        r = self.table.rowCount()
        self.table.insertRow(r)
        rank = QTableWidgetItem(str(r))
        rank.setFlags(Qt.ItemFlag.ItemIsEnabled)
        status = QTableWidgetItem("not checked")
        status.setFlags(Qt.ItemFlag.ItemIsEnabled)
        status.setForeground(WAIT)
        self.table.setItem(r, 0, rank)
        ssh = QTableWidgetItem(host.ssh)
        ssh.setData(Qt.ItemDataRole.UserRole, list(host.rdma))  # kept, not shown: jaccl's device map
        self.table.setItem(r, 1, ssh)
        self.table.setItem(r, 2, QTableWidgetItem(" ".join(host.ips)))
        self.table.setItem(r, 3, status)

    def remove_selected(self) -> None:
        rows = sorted({i.row() for i in self.table.selectedIndexes()}, reverse=True)
        for r in rows or [self.table.rowCount() - 1]:
            if r >= 0:
                self.table.removeRow(r)
        for r in range(self.table.rowCount()):
            self.table.item(r, 0).setText(str(r))
        self._edited()

    def choose_open(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open an mlx.launch host file", "", "Host files (*.json)")
        if path:
            self.open_hostfile(path)

    def open_hostfile(self, path: str) -> bool:
        from finetune_app.ui.widgets import message_of

        try:
            self.set_host_list(read_hostfile(path))
        except Exception as exc:
            self._say(message_of(exc), BAD)
            return False
        return True

    def choose_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the host file", "hosts.json", "Host files (*.json)")
        if path:
            write_hostfile(path, self.host_list())

    def to_json(self) -> str:
        return json.dumps(self.host_list().to_json())

    def restore_json(self, text: str) -> None:
        try:
            data = json.loads(text)
            self.set_host_list(HostList(tuple(Host(h["ssh"], tuple(h.get("ips", [])), tuple(h.get("rdma", [])))
                                              for h in data["hosts"]), data.get("backend", "ring"),
                                        tuple(data.get("envs", []))))
        except (ValueError, KeyError, TypeError):
            pass

    # ---- checking ----------------------------------------------------------------------------
    def set_paths(self, model: str, data: str) -> None:
        if (model, data) != (self.model, self.data):
            self.model, self.data = model, data
            self._edited()

    def _edited(self, *_args) -> None:
        if self._checked_for is not None and self._checked_for != self._key():
            self._checked_for = None
            for r in range(self.table.rowCount()):
                item = self.table.item(r, 3)
                if item is not None:
                    item.setText("not checked")
                    item.setForeground(WAIT)
        self._update_summary()
        self.changed.emit()

    def _key(self):
        return (self.host_list(), self.model, self.data)

    def check(self) -> None:
        from finetune_app.core.cluster.check import check_hosts
        from finetune_app.ui.workers import Task

        problem = self.list_problem()
        if problem:
            self._say(problem, BAD)
            return
        if self._task is not None:
            self._task.cancel()
        hosts, model, data = self._key()
        for r in range(self.table.rowCount()):
            self.table.item(r, 3).setText("checking…")
            self.table.item(r, 3).setForeground(WAIT)
        self.check_button.setEnabled(False)
        self._say(f"Checking {len(hosts.hosts)} hosts…", WAIT)
        task = Task(lambda t: check_hosts(hosts, model, data, on_result=t.report), name="host-check", parent=self)
        task.progressed.connect(self._show_check)
        task.succeeded.connect(lambda checks: self._checked(checks, (hosts, model, data)))
        task.failed.connect(lambda exc: self._check_failed(exc))
        self._task = task.start()

    def _show_check(self, c) -> None:
        if c.rank < self.table.rowCount():
            item = self.table.item(c.rank, 3)
            item.setText(("✓ " if c.ok else "✗ ") + c.summary())
            item.setForeground(OK if c.ok else BAD)
            item.setToolTip(c.summary())
            self.table.resizeRowToContents(c.rank)

    def _checked(self, checks, key) -> None:
        self.check_button.setEnabled(True)
        self.checks = checks
        for c in checks:  # again: the comparison with the first host may have added problems
            self._show_check(c)
        self._checked_for = key if key == self._key() else None
        self._update_summary()
        self.changed.emit()

    def _check_failed(self, exc) -> None:
        from finetune_app.ui.widgets import message_of

        self.check_button.setEnabled(True)
        self._say(f"The check could not run: {message_of(exc)}", BAD)

    # ---- readiness ---------------------------------------------------------------------------
    def list_problem(self) -> str:
        hosts = self.host_list()
        if not self.model or not self.data:
            return "Choose the model and the dataset first: the check looks for them on every host."
        return " ".join(hosts.problems())

    def why_not_ready(self) -> str:
        """Empty when the run can start on these hosts; else what to do, in words."""
        if not self.isChecked():
            return ""
        problem = self.list_problem()
        if problem:
            return problem
        if self._checked_for != self._key():
            return "Check the hosts (Model & Settings > Train on several machines)."
        bad = [c for c in self.checks if not c.ok]
        if bad:
            return f"Host {bad[0].rank} ({bad[0].host.ssh}) is not ready: {bad[0].summary()}"
        return ""

    def _update_summary(self) -> None:
        if not self.isChecked():
            self._say("", WAIT)
            return
        why = self.why_not_ready()
        n = len(self.host_list().hosts)
        self._say(why or f"Ready: {n} hosts answered and have the model and the data.", BAD if why else OK)

    def _say(self, text: str, colour: QColor) -> None:
        self.summary.setText(text)
        self.summary.setStyleSheet(f"color: {colour.name()};")
