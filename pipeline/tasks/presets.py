"""Named task presets: the paper's vision and language tasks, Llama-style LMs, the offline quickstart task
and MLPs on the generated MNIST-1D signals (offline too; 1,000 validation examples).

A config entry `preset: fm-16` starts from these values; any field it sets overrides them.
Vision states are recorded every 4 steps and language states every 200, as in the published
dataset. Dataset roots are left to the config (see `pipeline.data`).
"""

from __future__ import annotations

from typing import Any


def _convnet(channels: list[int], in_channels: int, classes: int, dataset: str, lr: float) -> dict[str, Any]:
    return dict(arch=dict(type='convnet', channels=channels, in_channels=in_channels, num_classes=classes),
                dataset=dict(name=dataset), optimizer='adamw', lr=[lr, lr], batch_size=128,
                record_every=4, eval_every=200, target=dict(metric='val_acc'))


def _gpt2(n_layer: int, n_embd: int, n_head: int) -> dict[str, Any]:
    return dict(arch=dict(type='gpt2', n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=256,
                          n_positions=64),
                dataset=dict(name='text', tokenizer='bytes', context=64), optimizer='adamw', lr=[2e-3, 2e-3],
                batch_size=32, record_every=200, eval_every=200, target=dict(metric='val_loss'))


def _llama(n_layer: int, n_embd: int, n_head: int, n_kv_head: int) -> dict[str, Any]:
    return dict(arch=dict(type='llama', n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_kv_head=n_kv_head,
                          vocab_size=256, n_positions=64),
                dataset=dict(name='text', tokenizer='bytes', context=64), optimizer='adamw', lr=[2e-3, 2e-3],
                batch_size=32, record_every=200, eval_every=200, target=dict(metric='val_loss'))


PRESETS: dict[str, dict[str, Any]] = {
    'fm-16': _convnet([16, 32, 32], 1, 10, 'fashion-mnist', 0.006),
    'fm-32': _convnet([32, 64, 64], 1, 10, 'fashion-mnist', 0.006),
    'c10-16': _convnet([16, 32, 32], 3, 10, 'cifar10', 0.003),
    'c10-32': _convnet([32, 64, 64], 3, 10, 'cifar10', 0.003),
    'c100-32': _convnet([32, 64, 64], 3, 100, 'cifar100', 0.003),
    'lm-3-24': _gpt2(3, 24, 3),
    'lm-2-32': _gpt2(2, 32, 2),
    'llama-2-32': _llama(2, 32, 4, 2),  # grouped-query attention: 4 query heads share 2 key/value heads
    'llama-3-64': _llama(3, 64, 4, 2),
    'digits-mlp': dict(arch=dict(type='mlp', in_features=64, hidden=[32, 32], num_classes=10),
                       dataset=dict(name='digits'), optimizer='adamw', lr=[3e-3, 3e-3], batch_size=64,
                       record_every=4, eval_every=20, target=dict(metric='val_acc')),
    'mnist1d-mlp': dict(arch=dict(type='mlp', in_features=40, hidden=[32, 32], num_classes=10),
                        dataset=dict(name='mnist1d'), optimizer='adamw', lr=[1e-3, 1e-3], batch_size=32,
                        record_every=4, eval_every=40, target=dict(metric='val_acc')),
}
