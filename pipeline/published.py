"""The paper's published trajectory dataset: what its files hold and how they map to task specs.

`SamsungSAILMontreal/nino_metatrain` on the Hugging Face hub, revision `mmap`: per task a raw
float16 C-order array (n_traj, n_states, n_params) in `<task>.dat` (language tasks split into
`<task>_p1.dat` and `<task>_p2.dat`, half the trajectories each) and the metrics in
`<task>_metrics.dat` (n_traj, n_states, n_metrics) float16. Parameters are flattened in
`named_parameters()` order; vision states are 4 Adam steps apart, language states 200.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REPO_ID = 'SamsungSAILMontreal/nino_metatrain'
REVISION = 'mmap'
VISION_METRICS = ('test_loss', 'test_acc', 'train_loss', 'train_acc')
LM_METRICS = ('train_loss',)


@dataclass(frozen=True)
class PublishedTask:
    name: str
    n_traj: int
    n_states: int
    n_params: int
    parts: int
    record_every: int
    metrics: tuple[str, ...]
    arch: dict[str, Any]
    dataset: str

    def part_files(self) -> list[str]:
        if self.parts == 1:
            return [f'{self.name}.dat']
        return [f'{self.name}_p{i + 1}.dat' for i in range(self.parts)]

    @property
    def metrics_file(self) -> str:
        return f'{self.name}_metrics.dat'

    def files(self) -> list[str]:
        return self.part_files() + [self.metrics_file]

    def file_sizes(self) -> dict[str, int]:
        """Bytes of each of its files, as the published shapes imply."""
        per_part = self.n_traj // self.parts
        sizes = {f: 2 * per_part * self.n_states * self.n_params for f in self.part_files()}
        sizes[self.metrics_file] = 2 * self.n_traj * self.n_states * len(self.metrics)
        return sizes

    def nbytes(self) -> int:
        """Bytes of all its files."""
        return sum(self.file_sizes().values())

    def with_shape(self, n_traj: int | None = None, n_states: int | None = None) -> PublishedTask:
        """The same task with other array sizes (small files in the same layout, e.g. for tests)."""
        from dataclasses import replace
        return replace(self, n_traj=n_traj or self.n_traj, n_states=n_states or self.n_states)

    def spec_dict(self) -> dict[str, Any]:
        """A TaskSpec mapping describing the published runs (architecture, interval, counts)."""
        return dict(name=self.name, arch=self.arch, dataset={'name': self.dataset, 'source': f'{REPO_ID}@{REVISION}'},
                    steps=(self.n_states - 1) * self.record_every, record_every=self.record_every,
                    eval_every=self.record_every, trajectories=self.n_traj)


def _convnet(in_channels: int) -> dict[str, Any]:
    return dict(type='convnet', channels=[16, 32, 32], in_channels=in_channels, num_classes=10)


def _gpt2(n_layer: int, n_embd: int, n_head: int) -> dict[str, Any]:
    return dict(type='gpt2', n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=50257, n_positions=1024)


PUBLISHED: dict[str, PublishedTask] = {t.name: t for t in [
    PublishedTask('fm-16', 300, 2688, 14378, 1, 4, VISION_METRICS, _convnet(1), 'fashion-mnist'),
    PublishedTask('c10-16', 300, 2513, 14666, 1, 4, VISION_METRICS, _convnet(3), 'cifar10'),
    PublishedTask('lm1b-3-24', 200, 124, 1252464, 2, 200, LM_METRICS, _gpt2(3, 24, 3), 'lm1b'),
    PublishedTask('lm1b-2-32', 200, 124, 1666464, 2, 200, LM_METRICS, _gpt2(2, 32, 2), 'lm1b'),
]}


def published_task(name: str) -> PublishedTask:
    if name not in PUBLISHED:
        raise ValueError(f'unknown published task {name!r}; published: {sorted(PUBLISHED)}')
    return PUBLISHED[name]
