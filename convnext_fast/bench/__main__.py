"""``python -m convnext_fast.bench --out DIR [--quick] [--budget-s S] [--compile-mode MODE]``."""
from .report import main

raise SystemExit(main())
