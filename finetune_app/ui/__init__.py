"""The desktop app (PySide6). Everything that trains, reads data or loads models lives in
`finetune_app.core`; this package only shows it and runs it off the GUI thread.

Modules: app (QApplication, style, dark mode, settings), main_window, model_picker,
dataset_browser + dataset_model (the lazy thumbnail grid), hyperparams, training_view, plots,
widgets (small shared pieces), workers (background jobs and the training QThread), quiet_gc (no
full garbage collection while a background job imports the libraries), stall_meter (how long the
event loop stalls), welcome (first launch), labelling (caption a folder of pictures),
platform_check (Linux: can Qt's X11 plugin load, checked before Qt starts).
"""
