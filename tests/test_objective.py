"""The training objective: cross-entropy, and its mix with a teacher's soft labels (knowledge distillation)."""
import math

import pytest
import torch

from training.engine import Augmentation, Objective, TrainStep, train_one_epoch
from training.models import SimpleCNN


def test_the_distillation_loss_is_hintons_mix_computed_by_hand():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    teacher = torch.tensor([[1.0, 3.0, 0.0], [0.0, 0.0, 2.0]])
    labels = torch.tensor([0, 2])
    weight, temp = 0.7, 4.0

    def softmax(row, t):
        e = [math.exp(v / t) for v in row]
        return [v / sum(e) for v in e]

    ce = sum(-math.log(softmax(s, 1.0)[y]) for s, y in zip(student.tolist(), labels.tolist(), strict=True)) / 2
    kl = sum(sum(p * (math.log(p) - math.log(q)) for p, q in zip(softmax(t, temp), softmax(s, temp), strict=True))
             for s, t in zip(student.tolist(), teacher.tolist(), strict=True)) / 2  # KL(teacher || student), per image
    objective = Objective(teacher=torch.nn.Identity(), distill_weight=weight, temperature=temp)
    assert objective.loss(student, labels, teacher).item() == pytest.approx((1 - weight) * ce + weight * kl * temp**2,
                                                                          rel=1e-6)
    assert objective.loss(student, labels, student).item() == pytest.approx((1 - weight) * ce, rel=1e-6)  # KL 0
    assert Objective().loss(student, labels, None).item() == pytest.approx(ce, rel=1e-6)


def test_an_epoch_with_a_teacher_asks_it_about_every_augmented_batch_and_learns_something_else():
    class CountingTeacher(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.seen = 0

        def forward(self, x):  # x: the student's normalized batch [B, 3, 32, 32]
            self.seen += x.shape[0]
            return torch.linspace(-2, 2, 10).expand(x.shape[0], 10)  # always prefers the last class

    images = torch.randint(0, 256, (24, 32, 32, 3), dtype=torch.uint8)
    labels = torch.randint(0, 10, (24,))
    losses = []
    for objective in (Objective(), Objective(teacher=CountingTeacher(), distill_weight=0.9)):
        torch.manual_seed(0)
        model = SimpleCNN()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        sched = torch.optim.lr_scheduler.StepLR(opt, 10)
        step = TrainStep(model, opt, sched, batch_size=8, mean=torch.zeros(3), std=torch.ones(3), amp=None,
                         generator=torch.Generator().manual_seed(0), objective=objective)
        stats = train_one_epoch(step, images, labels, aug=Augmentation())
        losses.append(stats["loss"])
    assert objective.teacher.seen == 24
    assert losses[0] != pytest.approx(losses[1])
