"""Export: adapters, fused (optionally quantized) mlx-vlm / mlx-lm models, Apple's FastVLM app
bundle (mlx-swift + fastvithd.mlpackage) and the mlx-swift-lm layout. Entry point:
`finetune_app.core.export.export.export(ExportOptions(...))` (docs/export.md). Submodules are
imported on use; importing this package loads nothing heavy."""
