"""Networks: a set of peer classifiers trained together and combined at inference."""

from __future__ import annotations

import functools
import logging
import pickle
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from alr_monai.algorithms.acquisition import add_dropout_before_last_linear, find_last_linear

logger = logging.getLogger("alr_monai")


class PeerEnsemble(nn.Module):
    """``num_peers`` independently initialised copies of one classifier; forward sums their logits.

    Co-teaching trains the peers on each other's small-loss picks; inference combines them by the sum of
    logits. Built from a factory (``"_mode_": "callable"`` in a bundle config) so every peer gets its own
    random initialisation.

    Args:
        network_factory: callable returning a fresh classifier (any ``monai.networks.nets`` class works).
        num_peers: how many peers (2 for co-teaching, 1 for a plain single-network baseline).
        dropout: if > 0, a Dropout layer is inserted before each peer's last linear layer, which MC-dropout
            BALD needs; a network with no dropout makes every MC sample identical (BALD would be all zeros).
    """

    def __init__(self, network_factory: Callable[[], nn.Module], num_peers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        if num_peers < 1:
            raise ValueError(f"num_peers must be >= 1, got {num_peers}")
        peers = [network_factory() for _ in range(num_peers)]
        if dropout > 0:
            peers = [add_dropout_before_last_linear(peer, dropout) for peer in peers]
        self.peers = nn.ModuleList(peers)

    @property
    def num_peers(self) -> int:
        return len(self.peers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A plain loop over the ModuleList keeps the ensemble scriptable for ckpt_export.
        outputs: list[torch.Tensor] = []
        for peer in self.peers:
            outputs.append(peer(x))
        return torch.stack(outputs, 0).sum(0)


class FeatureTap:
    """Captures the input of a network's last linear layer (the penultimate features) on every forward.

    The closed-form last-layer gradient used by VoG and the coreset embeddings both need these features; a
    forward hook gets them from the forward pass already being done.
    """

    def __init__(self, network: nn.Module) -> None:
        self.features: torch.Tensor | None = None
        self._handle = find_last_linear(network).register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        self.features = inputs[0]

    def pop(self) -> torch.Tensor:
        """Return the features of the last forward and forget them."""
        if self.features is None:
            raise RuntimeError("no forward pass has run since the last pop()")
        features, self.features = self.features, None
        return features

    def remove(self) -> None:
        self._handle.remove()


def load_weights(
    network: nn.Module, path: str | Path, map_location=None, hint: str = "the checkpoint comes from another network"
) -> nn.Module:
    """Load a saved model (a bare state dict, or ``{"model": state_dict}`` as MONAI's savers write) into ``network``.

    Args:
        network: the network to fill, built with the settings the checkpoint was trained with.
        path: the ``.pt`` file.
        map_location: passed to ``torch.load``.
        hint: what to check when the file does not fit ``network`` (appended to the error).

    Returns:
        ``network``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` cannot be read as a checkpoint, or its weights do not fit ``network``; the message
            names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (EOFError, pickle.UnpicklingError, RuntimeError, OSError) as error:
        raise ValueError(f"model file {path} cannot be read ({type(error).__name__}: {error})") from error
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"model file {path} holds a {type(state).__name__}, not a state dict")
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"model file {path} does not fit this network ({error}); {hint}") from error
    return network


# ------------------------------------------------------------------------------------------------ pretrained
# Where a checkpoint dict keeps the network: MONAI's savers ("model"), alr's run checkpoints ("network"), Lightning
# and timm style files ("state_dict"), and others ("net").
_NETWORK_ENTRIES = ("model", "network", "state_dict", "net")
_SHOWN_KEYS = 12  # keys named per kind of mismatch; the rest are counted


def _is_state_dict(value: object) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def read_state_dict(path: str | Path, map_location="cpu") -> dict[str, torch.Tensor]:
    """The network weights in ``path``: a bare state dict, or a checkpoint dict holding one under ``model``,
    ``network``, ``state_dict`` or ``net``; a ``module.`` prefix (DistributedDataParallel) is dropped.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read (``torch.load`` with ``weights_only=True``: nothing is executed), or
            holds no state dict; the message names the file and what it holds.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file {path} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (EOFError, pickle.UnpicklingError, RuntimeError, OSError) as error:
        raise ValueError(
            f"pretrained weights file {path} cannot be read as a PyTorch state dict ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); a TorchScript model.ts is not a state dict: "
            "pass the bundle's models/model.pt"
        ) from error
    if isinstance(state, dict) and not _is_state_dict(state):
        for entry in _NETWORK_ENTRIES:
            if _is_state_dict(state.get(entry)):
                state = state[entry]
                break
    if not _is_state_dict(state):
        held = f"a dict with keys {sorted(map(str, state))[:8]}" if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"pretrained weights file {path} holds {held}, not a network state dict (nor a checkpoint with one "
            f"under {', '.join(repr(e) for e in _NETWORK_ENTRIES)})"
        )
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def _peer_states(state: dict[str, torch.Tensor], num_peers: int, path: Path) -> list[dict[str, torch.Tensor]]:
    """One source state dict per peer: a PeerEnsemble file's own peers (peer 0 for peers it lacks), or a single
    network's weights for every peer."""
    if not all(k.startswith("peers.") for k in state):
        return [state] * num_peers
    grouped: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        index, _, rest = key[len("peers.") :].partition(".")
        grouped.setdefault(int(index), {})[rest] = value
    if len(grouped) != num_peers:
        logger.warning(
            "pretrained %s holds %d peer(s), this network has %d: every peer starts from the file's peer %d",
            path,
            len(grouped),
            num_peers,
            min(grouped),
        )
        return [grouped[min(grouped)]] * num_peers
    return [grouped[k] for k in sorted(grouped)]


def _align_head(source: dict[str, torch.Tensor], head: str) -> dict[str, torch.Tensor]:
    """Rename the classifier head's keys across a dropout wrapper (``fc.weight`` <-> ``fc.1.weight``)."""
    source = dict(source)
    if head.endswith(".1") and f"{head}.weight" not in source and f"{head[:-2]}.weight" in source:
        bare = head[:-2]
    elif f"{head}.weight" not in source and f"{head}.1.weight" in source:
        bare = f"{head}.1"
    else:
        return source
    for suffix in ("weight", "bias"):
        if f"{bare}.{suffix}" in source:
            source[f"{head}.{suffix}"] = source.pop(f"{bare}.{suffix}")
    return source


def _shape(tensor: torch.Tensor) -> str:
    return str(list(tensor.shape))


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f" and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else "")


def load_pretrained(network: nn.Module, path: str | Path | None, strict: bool = True) -> nn.Module:
    """Start ``network`` (every peer of a :class:`PeerEnsemble`) from the weights in ``path``.

    ``path`` holds a phase-1 ``models/model.pt`` (a PeerEnsemble: each peer from its own weights), a single
    network's state dict (a MONAI bundle's ``models/model.pt``: every peer starts from it), or a checkpoint dict
    holding either (:func:`read_state_dict`). When the classifier head (the last ``nn.Linear``) has another number
    of classes than this network, the head keeps its fresh initialisation and a warning says so; every other
    weight must match by name and shape unless ``strict`` is False.

    Args:
        network: the network to fill (a PeerEnsemble, or any module, treated as one peer).
        path: the weights file; None or "" leaves ``network`` as initialised.
        strict: refuse weights that do not fit, naming each missing, unexpected and mis-shaped key; False loads
            the weights that fit and warns about the rest.

    Returns:
        ``network``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is no state dict, or (``strict``) its weights do not fit; the message names the file
            and every key (up to twelve of each kind, then a count).
    """
    if path is None or not str(path).strip():
        return network
    from alr_monai.algorithms.acquisition import _last_linear_name

    path = Path(path).expanduser()
    state = read_state_dict(path)
    peers = list(network.peers) if isinstance(network, PeerEnsemble) else [network]
    sources = _peer_states(state, len(peers), path)
    loaded = []
    for number, (peer, source) in enumerate(zip(peers, sources, strict=True)):
        target = peer.state_dict()
        head = _last_linear_name(peer)
        source = _align_head(source, head)
        head_keys = [f"{head}.weight", f"{head}.bias"]
        head_message = None
        if f"{head}.weight" in source and source[f"{head}.weight"].shape[0] != target[f"{head}.weight"].shape[0]:
            head_message = (
                f"pretrained {path}: its classifier head {head} has {source[f'{head}.weight'].shape[0]} classes, this "
                f"run {target[f'{head}.weight'].shape[0]}: the head is re-initialised (random), every other layer "
                "starts from the file"
            )
            source = {k: v for k, v in source.items() if k not in head_keys}
            target = {k: v for k, v in target.items() if k not in head_keys}
        missing = [k for k in target if k not in source]
        unexpected = [k for k in source if k not in target]
        shapes = [
            f"{k} (file {_shape(source[k])}, network {_shape(target[k])})"
            for k in target
            if k in source and source[k].shape != target[k].shape
        ]
        problems = [
            f"{label}: {_listed(keys)}"
            for label, keys in (
                ("missing in the file", missing),
                ("not in this network", unexpected),
                ("shape differs", shapes),
            )
            if keys
        ]
        if problems and strict:
            raise ValueError(
                f"pretrained weights {path} do not fit this network (peer {number}): " + "; ".join(problems) + ". "
                "Build the same network as the file's (network_factory#... keys, in_channels, spatial_dims), or "
                "pass --pretrained_strict false to load only the weights that fit"
            )
        if head_message and number == 0:  # after the strict check: a refused file changes nothing
            logger.warning(head_message)
        fitting = {k: v for k, v in source.items() if k in target and v.shape == target[k].shape}
        if problems and number == 0:
            logger.warning(
                "pretrained %s: %d weights loaded, the rest left as initialised: %s",
                path,
                len(fitting),
                "; ".join(problems),
            )
        peer.load_state_dict(fitting, strict=False)
        loaded.append(len(fitting))
    logger.info("pretrained weights from %s: %d tensors loaded into each of %d peer(s)", path, loaded[0], len(peers))
    return network


# Classifiers a user picks by name (``network_name``); ``None`` keeps the bundle's ``network_factory``.
NETWORK_NAMES = ("resnet18", "resnet34", "resnet50", "densenet121", "efficientnet-b0")


def build_classifier(name: str, spatial_dims: int, in_channels: int, num_classes: int) -> nn.Module:
    """One of MONAI's standard classifiers by name, randomly initialised (``pretrained=False``: nothing is downloaded).

    The ResNets downsample in their first convolution (``conv1_t_stride=2``, as torchvision's and MedicalNet's do;
    MONAI's default stride 1 costs about 4x the FLOPs at the same input size). Every network ends in one
    ``nn.Linear`` whose input is the pooled feature vector, which :class:`FeatureTap` (VoG, coreset, prototypes)
    and MC-dropout BALD use.

    Args:
        name: one of :data:`NETWORK_NAMES`.
        spatial_dims: 2 for images, 3 for volumes.
        in_channels: input channels.
        num_classes: output logits.

    Returns:
        The network.

    Raises:
        ValueError: an unknown ``name`` (the message lists the choices) or ``spatial_dims`` other than 2 or 3.
    """
    from monai.networks import nets

    if spatial_dims not in (2, 3):
        raise ValueError(f"network {name!r}: spatial_dims must be 2 or 3, got {spatial_dims}")
    resnets = {"resnet18": nets.resnet18, "resnet34": nets.resnet34, "resnet50": nets.resnet50}
    if name in resnets:
        return resnets[name](
            pretrained=False,
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            num_classes=num_classes,
            conv1_t_stride=2,
        )
    if name == "densenet121":
        return nets.DenseNet121(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, pretrained=False
        )
    if name == "efficientnet-b0":
        return nets.EfficientNetBN(
            "efficientnet-b0",
            pretrained=False,
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            num_classes=num_classes,
        )
    raise ValueError(f"unknown network_name {name!r}; choose one of: {', '.join(NETWORK_NAMES)} (or null)")


def classifier_factory(
    name: str | None, spatial_dims: int, in_channels: int, num_classes: int, default: Callable[[], nn.Module]
) -> Callable[[], nn.Module]:
    """The peer factory a bundle uses: ``default`` (its ``network_factory``) when ``name`` is None, else the named one.

    Returns a ``functools.partial`` of :func:`build_classifier`, so ``models/metadata.json`` records the name
    (:func:`alr_monai.export.network_config`). The name is checked here, before anything is trained.
    """
    if name is None:
        return default
    if name not in NETWORK_NAMES:
        raise ValueError(f"unknown network_name {name!r}; choose one of: {', '.join(NETWORK_NAMES)} (or null)")
    return functools.partial(
        build_classifier,
        name=name,
        spatial_dims=int(spatial_dims),
        in_channels=int(in_channels),
        num_classes=int(num_classes),
    )
