"""Run records: the SQLite database of every training run (schema + migrations, the store, the
dataset/model fingerprints). The public face is `finetune_app.core.runs`."""
