"""transformers-qwen3: a multimodal Qwen3 for Hugging Face transformers and llama.cpp.

Importing this package registers the model with transformers' Auto classes, so pip users can load our folders
without ``trust_remote_code``. This file never ships to the Hub: the Hub files in ``remote/`` are self-contained.

The import itself is cheap (no torch, no transformers), so that the command line starts at once:

- The public names below are resolved on first use (a module ``__getattr__``).
- Registration waits for transformers and imports nothing itself: when ``configuration_auto`` has run, AutoConfig
  gets stand-ins keyed by our ``model_type``; when both our configuration file and ``modeling_auto`` /
  ``tokenization_auto`` / ``processing_auto`` have run (in either order), those Auto classes get stand-ins keyed
  by the real config class. A stand-in imports its file on the first attribute an Auto class reads from it, i.e.
  when a folder is actually loaded. So ``from transformers import AutoModelForCausalLM`` costs what it costs without
  us, and a registration that runs in the middle of a transformers import cannot meet a half-initialised module
  (``Qwen3Config``'s docstring decorator imports ``modeling_auto``, for one).
"""

import importlib
import importlib.abc
import sys

__version__ = "0.1.0"

_CONFIGURATION = "transformers_qwen3.remote.configuration_qwen3_multimodal"
_MODELING = "transformers_qwen3.remote.modeling_qwen3_multimodal"
_TOKENIZATION = "transformers_qwen3.remote.tokenization_qwen3_multimodal"
_PROCESSING = "transformers_qwen3.remote.processing_qwen3_multimodal"
_MEDIA = "transformers_qwen3.remote.media_qwen3_multimodal"

# public name -> module that defines it, imported on first access
_LAZY = {
    "Qwen3MultimodalConfig": _CONFIGURATION,
    "Qwen3MultimodalTextConfig": _CONFIGURATION,
    "Qwen3MultimodalModel": _MODELING,
    "Qwen3MultimodalPreTrainedModel": _MODELING,
    "Qwen3MultimodalForConditionalGeneration": _MODELING,
    "Qwen3MultimodalForSequenceClassification": _MODELING,
    "Qwen3MultimodalTokenizer": _TOKENIZATION,
    "Qwen3MultimodalProcessor": _PROCESSING,
    "MediaError": _MEDIA,
    "MediaPolicy": _MEDIA,
    # the Pipeline (generation threads, streaming)
    "Pipeline": "transformers_qwen3.inference.pipeline",
}
__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)


# --------------------------------------------------------------------------------------------------------------------
# Registration with the Auto classes
# --------------------------------------------------------------------------------------------------------------------


class _Deferred(type):
    """Metaclass of a stand-in class: any attribute it does not hold itself, and calling it, go to the real class,
    which is imported then. It holds ``__name__``, ``__module__`` and ``model_type`` / ``config_class``: all that
    registering and looking up read. ``from_dict`` / ``from_pretrained`` / ``_from_config`` load the real class."""

    def __getattr__(cls, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # dunder probes (copy, pickle, inspect) must not import the real class
        return getattr(cls.real(), name)

    def __call__(cls, *args, **kwargs):
        return cls.real()(*args, **kwargs)

    def real(cls):
        return getattr(importlib.import_module(cls.__module__), cls.__name__)


def _stand_in(module: str, name: str, **attributes):
    return _Deferred(name, (), {"__module__": module, "__qualname__": name, **attributes})


def _register_configs(auto):
    # Keyed by model_type (a string), so a stand-in does: the config file loads with the first folder.
    for name, model_type in (
        ("Qwen3MultimodalConfig", "qwen3_multimodal"),
        ("Qwen3MultimodalTextConfig", "qwen3_multimodal_text"),
    ):
        auto.AutoConfig.register(model_type, _stand_in(_CONFIGURATION, name, model_type=model_type), exist_ok=True)


def _register_models(auto, config):
    def model(name):
        return _stand_in(_MODELING, name, config_class=config)

    generation = model("Qwen3MultimodalForConditionalGeneration")
    for auto_class, model_class in (
        (auto.AutoModel, model("Qwen3MultimodalModel")),
        (auto.AutoModelForCausalLM, generation),
        (auto.AutoModelForImageTextToText, generation),
        (auto.AutoModelForSequenceClassification, model("Qwen3MultimodalForSequenceClassification")),
    ):
        auto_class.register(config, model_class, exist_ok=True)


def _register_tokenizer(auto, config):
    tokenizer = _stand_in(_TOKENIZATION, "Qwen3MultimodalTokenizer", config_class=config)
    auto.AutoTokenizer.register(config, tokenizer_class=tokenizer, exist_ok=True)


def _register_processor(auto, config):
    auto.AutoProcessor.register(
        config, _stand_in(_PROCESSING, "Qwen3MultimodalProcessor", config_class=config), exist_ok=True
    )


# The model, tokenizer and processor mappings are keyed by the config *class*, so they are filled once both the
# transformers module and our configuration file have run (in either order).
_KEYED_BY_CONFIG = {
    "transformers.models.auto.modeling_auto": _register_models,
    "transformers.models.auto.tokenization_auto": _register_tokenizer,
    "transformers.models.auto.processing_auto": _register_processor,
}
_PENDING = {"transformers.models.auto.configuration_auto", _CONFIGURATION, *_KEYED_BY_CONFIG}


def _register_processor_by_name(auto):
    # transformers 5.19's AutoProcessor reads processor_config.json first and looks its "processor_class" up by name
    # (``processor_class_from_name`` scans the registered values) before it loads config.json; a folder loaded with
    # AutoProcessor alone never imports our configuration file, so the registration keyed by the real config class
    # has not happened yet and it asked for trust_remote_code. A stand-in key is found by that name scan only, never
    # by ``type(config)``; the real key follows once the configuration file has run.
    key = _stand_in(_CONFIGURATION, "Qwen3MultimodalConfig", model_type="qwen3_multimodal")
    auto.AutoProcessor.register(
        key, _stand_in(_PROCESSING, "Qwen3MultimodalProcessor", config_class=key), exist_ok=True
    )


def _register(module_name: str) -> None:
    """Called once ``module_name`` has run. Imports nothing: it may run inside any import of transformers."""
    _PENDING.discard(module_name)
    if module_name == "transformers.models.auto.configuration_auto":
        _register_configs(sys.modules[module_name])
    if module_name == "transformers.models.auto.processing_auto" and _CONFIGURATION in _PENDING:
        _register_processor_by_name(sys.modules[module_name])
    if _CONFIGURATION in _PENDING:
        return
    config = sys.modules[_CONFIGURATION].Qwen3MultimodalConfig
    for name, register in list(_KEYED_BY_CONFIG.items()):
        if name not in _PENDING:
            register(sys.modules[name], config)
            del _KEYED_BY_CONFIG[name]
    if (
        not _KEYED_BY_CONFIG
        and "transformers.models.auto.configuration_auto" not in _PENDING
        and _FINDER in sys.meta_path
    ):
        sys.meta_path.remove(_FINDER)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a pending module it takes the spec the other finders give and runs our
    registration right after the module's own code."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _PENDING:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register(fullname)

        loader.exec_module = exec_then_register  # the loader object belongs to this one spec
        return spec


_FINDER = _RegisterAfterImport()
sys.meta_path.insert(0, _FINDER)
for _name in [
    name
    for name in ("transformers.models.auto.configuration_auto", _CONFIGURATION, *_KEYED_BY_CONFIG)
    if name in sys.modules
]:
    _register(_name)  # already imported before us
