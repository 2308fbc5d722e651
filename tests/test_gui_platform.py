"""Issue 18 item 4: on Linux, `finetune-app` checks before Qt starts that the X11 (xcb) platform
plugin can load, names the Debian/Ubuntu packages it needs and falls back to the headless demo."""

from __future__ import annotations

from finetune_app.ui.platform_check import missing_packages, unresolved_by_ldd, uses_xcb, xcb_plugin, xcb_problem

X11 = {"DISPLAY": ":0"}


def test_missing_libraries_are_named_with_an_apt_get_line():
    absent = {"xcb-cursor", "xcb-icccm", "xcb-keysyms"}
    find = lambda name: None if name in absent else f"lib{name}.so"  # noqa: E731
    msg = xcb_problem(env=X11, platform="linux", find=find, unresolved=None)
    assert msg is not None
    assert "sudo apt-get install -y libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1\n" in msg
    assert "headless demo" in msg
    assert xcb_problem(env=X11, platform="linux", find=lambda n: f"lib{n}.so", unresolved=None) is None


def test_loader_not_found_sonames_map_to_packages():
    assert missing_packages(unresolved=["libxcb-cursor.so.0", "libxcb-icccm.so.4", "libxcb-keysyms.so.1",
                                        "libxcb-cursor.so.0"]) == ["libxcb-cursor0", "libxcb-icccm4",
                                                                   "libxcb-keysyms1"]
    assert missing_packages(unresolved=["libfoo.so.3"]) == ["libfoo3"]
    assert missing_packages(unresolved=[]) == []


def test_only_checked_where_qt_would_use_x11():
    assert uses_xcb(X11, "linux")
    assert not uses_xcb({}, "linux"), "no display: the headless demo runs anyway"
    assert not uses_xcb({"DISPLAY": ":0", "QT_QPA_PLATFORM": "offscreen"}, "linux")
    assert not uses_xcb({"WAYLAND_DISPLAY": "wayland-0", "DISPLAY": ":0"}, "linux")
    assert uses_xcb({"QT_QPA_PLATFORM": "xcb"}, "linux")
    assert not uses_xcb(X11, "darwin")
    assert xcb_problem(env={"QT_QPA_PLATFORM": "offscreen"}, platform="linux",
                       find=lambda n: None, unresolved=None) is None


def test_this_machine_agrees_with_the_loader():
    """On this machine: the message names exactly what ldd says the real plugin lacks."""
    plugin = xcb_plugin()
    if plugin is None:
        return
    unresolved = unresolved_by_ldd(plugin)
    if unresolved is None:
        return
    msg = xcb_problem(env=X11, platform="linux")
    if unresolved:
        assert msg is not None and all(p in msg for p in missing_packages(unresolved=unresolved))
    else:
        assert msg is None


def test_gui_command_falls_back_to_the_demo(monkeypatch, capsys):
    """`finetune-app gui` where the plugin cannot load: the message, then the headless demo."""
    import finetune_app.cli as cli
    import finetune_app.ui.platform_check as pc

    ran = []
    monkeypatch.setattr(pc, "xcb_problem", lambda: "Qt's X11 needs libxcb-cursor0 ... sudo apt-get install -y "
                        "libxcb-cursor0")
    real_main = cli.main
    monkeypatch.setattr(cli, "main", lambda argv=None: ran.append(argv) or 0)
    from finetune_app.cli import gui

    assert gui.run(type("A", (), {"paths": [], "no_welcome": False})()) == 0
    assert ran == [["demo"]]
    assert "apt-get install -y libxcb-cursor0" in capsys.readouterr().err
    assert real_main is not None
