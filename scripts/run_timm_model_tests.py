#!/usr/bin/env python
"""Run timm's own model tests (``tests/test_models.py`` of huggingface/pytorch-image-models) against
convnext_fast's factories.

timm's test module builds every model with ``timm.create_model`` and lists them with
``timm.list_models``. A pytest plugin (this file's ``_PLUGIN`` text, written to a temporary
directory and loaded with ``-p``) replaces, before the test module is imported:

* ``timm.list_models``: timm's own answer for the same arguments, kept to the 18 architectures
  convnext_fast provides (and their pretrained tags where timm lists tags);
* ``timm.create_model``: :func:`convnext_fast.create_model` for those names;
* ``timm.get_pretrained_cfg_value``: the value from our ``pretrained_cfg``;
* ``timm.list_pretrained``: nothing (the ``test_*`` models with reference outputs are timm's own).

Usage::

    git clone https://github.com/huggingface/pytorch-image-models /path/to/timm-src
    python scripts/run_timm_model_tests.py /path/to/timm-src [extra pytest arguments, e.g. -k atto]

The installed timm (``pip install timm``) runs the tests; the checkout only provides
``tests/test_models.py``, which is never copied into this repository. Cases that need weights from
the Hugging Face hub (``test_model_load_pretrained``, ``test_model_features_pretrained``) are
deselected: convnext_fast never downloads weights; so are the cases about other models (timm's
``regnetx_002`` and NaFlexViT checks). ``test_model_forward_torchscript`` (and the FX +
TorchScript case) meet convnext_fast's deliberate refusal of ``torch.jit.script``; they are expected to
fail with that message (use ``torch.export``).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

_PLUGIN = textwrap.dedent('''
    """pytest plugin: timm's model registry answers with convnext_fast's models (see
    scripts/run_timm_model_tests.py)."""
    import timm
    import timm.models

    import convnext_fast
    from convnext_fast import pretrained as _ours

    _timm_list_models = timm.list_models


    def _is_ours(name):
        return name.split(".", 1)[0] in _ours.MODEL_CONFIGS


    def list_models(*args, **kwargs):
        return [n for n in _timm_list_models(*args, **kwargs) if _is_ours(n)]


    def list_pretrained(*args, **kwargs):
        return []


    def create_model(model_name, pretrained=False, **kwargs):
        if not _is_ours(model_name):
            raise ValueError(f"{model_name} is not a convnext_fast model")
        return convnext_fast.create_model(model_name, pretrained=pretrained or None, **kwargs)


    def get_pretrained_cfg_value(model_name, cfg_key):
        arch, tag = _ours._split_name(model_name)
        return _ours._named_pretrained_cfg(arch, tag).get(cfg_key)


    for _module in (timm, timm.models):
        _module.list_models = list_models
        _module.list_pretrained = list_pretrained
        _module.create_model = create_model
        _module.get_pretrained_cfg_value = get_pretrained_cfg_value


    # Cases that need the hub's weights: convnext_fast loads weights from local files only.
    DESELECT = ("test_model_load_pretrained", "test_model_features_pretrained", "test_model_inference")


    def pytest_configure(config):
        for marker in ("base", "cfg", "torchscript", "features", "fxforward", "fxbackward", "timeout"):
            config.addinivalue_line("markers", f"{marker}: timm's marker")


    def _about_ours(item):
        # Cases of other models (timm's regnetx_002 / naflexvit checks name theirs, or take none).
        params = getattr(getattr(item, "callspec", None), "params", {})
        return _is_ours(str(params.get("model_name", "")))


    def pytest_collection_modifyitems(config, items):
        dropped = [i for i in items if i.originalname in DESELECT or not _about_ours(i)]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [i for i in items if i not in dropped]
''')

def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    checkout, extra = argv[0], argv[1:]
    test_file = os.path.join(checkout, "tests", "test_models.py")
    if not os.path.isfile(test_file):
        print(f"no tests/test_models.py under {checkout!r}: pass a checkout of huggingface/pytorch-image-models",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as plugin_dir:
        with open(os.path.join(plugin_dir, "convnext_fast_timm_plugin.py"), "w") as f:
            f.write(_PLUGIN)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [plugin_dir, os.environ.get("PYTHONPATH")])))
        cmd = [sys.executable, "-m", "pytest", test_file, "-p", "convnext_fast_timm_plugin", "-p", "no:cacheprovider",
               "--rootdir", plugin_dir, "-c", os.devnull, "-q", "-rfE", *extra]
        return subprocess.call(cmd, env=env, cwd=plugin_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
