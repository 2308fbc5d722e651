from finetune_app.cli import main

raise SystemExit(main())
