"""The ``scratch`` mode's network: a plain small CNN as a ``transformers`` model (config + weights folder).

``depth`` stages of convolution (``filter_size`` px kernels) → batch norm → ReLU → 2×2 max pooling, with
``filters`` channels in the first stage doubling each stage, then global average pooling, dropout and a
linear classifier. Saved versions are ordinary Hugging Face folders (``config.json`` with
``model_type: scratch_cnn``, ``model.safetensors``, ``preprocessor_config.json``); importing this module
registers the type with the ``Auto*`` classes, so ``AutoModelForImageClassification.from_pretrained`` and
``pipeline("image-classification")`` load them in any process that imported it (``classifier.backbone``
does, before every load).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import (AutoConfig, AutoModel, AutoModelForImageClassification, PreTrainedConfig,
                          PreTrainedModel)
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutputWithNoAttention

MODEL_TYPE = "scratch_cnn"


class ScratchCNNConfig(PreTrainedConfig):
    """Shape of the scratch CNN: ``filters`` channels in stage 1 (doubling per stage), ``filter_size`` px
    kernels, ``depth`` stages; ``dropout`` (0–1) in front of the classifier; ``image_size`` in pixels."""

    model_type = MODEL_TYPE

    def __init__(self, num_channels: int = 3, filters: int = 32, filter_size: int = 3, depth: int = 3,
                 dropout: float = 0.2, image_size: int = 64, **kwargs):
        self.num_channels, self.filters, self.filter_size, self.depth = num_channels, filters, filter_size, depth
        self.dropout, self.image_size = dropout, image_size
        super().__init__(**kwargs)

    @property
    def hidden_sizes(self) -> list[int]:
        """Output channels of each stage."""
        return [self.filters * 2 ** i for i in range(self.depth)]


class ScratchCNNConvLayer(nn.Module):
    """Convolution → batch norm → ReLU; the attribute names let ``fold_batch_norms`` fuse it for inference."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.convolution = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.normalization = nn.BatchNorm2d(out_channels)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.normalization(self.convolution(hidden_states)))


class ScratchCNNPreTrainedModel(PreTrainedModel):
    config_class = ScratchCNNConfig
    base_model_prefix = "scratch_cnn"
    main_input_name = "pixel_values"

    def _init_weights(self, module: nn.Module) -> None:
        # He initialisation for ReLU networks and unit batch-norm scales: the signal keeps its size through
        # every stage from the first step (transformers' generic N(0, 0.02) would shrink it stage by stage).
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if getattr(module, "running_mean", None) is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, std=0.01)
            init.zeros_(module.bias)


class ScratchCNNModel(ScratchCNNPreTrainedModel):
    """The convolutional stages and global average pooling: ``pooler_output`` is (n, channels of the last stage)."""

    def __init__(self, config: ScratchCNNConfig):
        super().__init__(config)
        sizes = [config.num_channels] + config.hidden_sizes
        self.stages = nn.ModuleList(
            nn.Sequential(ScratchCNNConvLayer(c_in, c_out, config.filter_size), nn.MaxPool2d(2))
            for c_in, c_out in zip(sizes[:-1], sizes[1:]))
        self.pooler = nn.AdaptiveAvgPool2d(1)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **kwargs) -> BaseModelOutputWithPoolingAndNoAttention:
        hidden = pixel_values
        states = [hidden] if output_hidden_states else None
        for stage in self.stages:
            hidden = stage(hidden)
            if states is not None:
                states.append(hidden)
        pooled = self.pooler(hidden).flatten(1)
        return BaseModelOutputWithPoolingAndNoAttention(last_hidden_state=hidden, pooler_output=pooled,
                                                        hidden_states=tuple(states) if states else None)


class ScratchCNNForImageClassification(ScratchCNNPreTrainedModel):
    """:class:`ScratchCNNModel` → dropout → linear ``classifier`` (the head ``FeatureModel`` splits off)."""

    def __init__(self, config: ScratchCNNConfig):
        super().__init__(config)
        self.scratch_cnn = ScratchCNNModel(config)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.hidden_sizes[-1], config.num_labels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                **kwargs) -> ImageClassifierOutputWithNoAttention:
        outputs = self.scratch_cnn(pixel_values, output_hidden_states=output_hidden_states)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


def _register() -> None:
    """Make ``scratch_cnn`` folders loadable through the Auto classes (idempotent across re-imports)."""
    for register in (lambda: AutoConfig.register(MODEL_TYPE, ScratchCNNConfig),
                     lambda: AutoModel.register(ScratchCNNConfig, ScratchCNNModel),
                     lambda: AutoModelForImageClassification.register(ScratchCNNConfig, ScratchCNNForImageClassification)):
        try:
            register()
        except ValueError:  # already registered by an earlier import of this module
            pass


_register()
