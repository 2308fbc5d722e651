"""Helpers shared by the GUI tests (Qt only: importing this needs PySide6)."""

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QMessageBox


def click_in_dialog(name: str, button_text: str) -> list:
    """Click `button_text` in the QMessageBox called `name` as soon as it is open; the returned list
    holds the button's text once it was clicked."""
    clicked = []

    def poll():
        for widget in QApplication.topLevelWidgets():
            if isinstance(widget, QMessageBox) and widget.objectName() == name and widget.isVisible():
                for b in widget.buttons():
                    if b.text() == button_text:
                        clicked.append(button_text)
                        b.click()
                        return
        QTimer.singleShot(20, poll)

    QTimer.singleShot(0, poll)
    return clicked
