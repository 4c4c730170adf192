from __future__ import annotations

import math
import secrets

import pytest
import torch
import torch.nn.functional as F

from multigeometry.geometry import (
    ConeParams,
    angles,
    bound_aperture,
    compose_cones,
    cone_from_raw,
    cone_similarity,
    containment,
    pairwise_angles,
    pairwise_containment,
)

F64 = torch.float64


@pytest.fixture
def gen() -> torch.Generator:
    seed = secrets.randbits(31)
    print(f"random seed {seed}")
    return torch.Generator().manual_seed(seed)


def unit(angle_deg: float) -> list[float]:
    """A unit vector in the x-y plane of R^3 at this angle from the x axis."""
    r = math.radians(angle_deg)
    return [math.cos(r), math.sin(r), 0.0]


def cones(*specs: tuple[float, float]) -> ConeParams:
    """Cones from (direction angle in degrees, aperture in degrees)."""
    direction = torch.tensor([unit(a) for a, _ in specs], dtype=F64)
    theta = torch.tensor([math.radians(t) for _, t in specs], dtype=F64)
    return ConeParams(direction, theta)


def random_cones(gen: torch.Generator, b: int, d: int) -> ConeParams:
    direction = F.normalize(torch.randn(b, d, generator=gen, dtype=F64), dim=-1)
    return ConeParams(direction, torch.rand(b, generator=gen, dtype=F64))


# (outer cone, inner cone, how many degrees the inner one sticks out; 0 = contained)
TRUTH_TABLE = [
    ((0, 40), (0, 20), 0.0),  # same axis, narrower: inside
    ((0, 20), (0, 40), 20.0),  # same axis, wider: sticks out by the difference
    ((0, 30), (0, 30), 0.0),  # a cone contains itself
    ((0, 40), (15, 20), 0.0),  # off axis but inside: 15 + 20 < 40
    ((0, 40), (20, 20), 0.0),  # touching the boundary from inside: 20 + 20 = 40
    ((0, 40), (30, 20), 10.0),  # crosses the boundary
    ((0, 10), (90, 5), 85.0),  # disjoint
    ((0, 40), (25, 0), 0.0),  # a ray (an item as a point) inside
    ((0, 40), (50, 0), 10.0),  # a ray outside: MERU's angle minus aperture
    ((0, 89), (180, 1), 92.0),  # pointing the other way
]


@pytest.mark.parametrize(("outer", "inner", "out_deg"), TRUTH_TABLE)
def test_containment_truth_table(outer: tuple, inner: tuple, out_deg: float) -> None:
    score = containment(cones(outer), cones(inner))
    assert score.shape == (1,)
    assert math.degrees(score.item()) == pytest.approx(out_deg, abs=1e-6)
    if out_deg == 0.0:
        assert score.item() == 0.0


def test_pairwise_containment_matches_paired(gen: torch.Generator) -> None:
    outer = random_cones(gen, 5, 4)
    inner = random_cones(gen, 3, 4)
    table = pairwise_containment(outer, inner)
    for i in range(5):
        for j in range(3):
            pair = containment(outer.map(lambda t, i=i: t[i : i + 1]), inner.map(lambda t, j=j: t[j : j + 1]))
            torch.testing.assert_close(table[i, j], pair[0])


def test_angles(gen: torch.Generator) -> None:
    u = torch.tensor([unit(0), unit(0), unit(90), unit(180), unit(30)], dtype=F64)
    v = torch.tensor([unit(0), unit(60), unit(0), unit(0), unit(-45)], dtype=F64)
    torch.testing.assert_close(angles(u, v), torch.tensor([0.0, 60.0, 90.0, 180.0, 75.0], dtype=F64).deg2rad())
    x = F.normalize(torch.randn(6, 5, generator=gen, dtype=F64), dim=-1)
    y = F.normalize(torch.randn(4, 5, generator=gen, dtype=F64), dim=-1)
    loop = torch.stack([angles(x, y[j].expand_as(x)) for j in range(4)], dim=1)
    torch.testing.assert_close(pairwise_angles(x, y), loop)


def test_angle_gradients_are_finite_at_identical_directions() -> None:
    u = F.normalize(torch.tensor([[1.0, 2.0, 3.0]]), dim=-1).requires_grad_(True)
    v = u.detach().clone().requires_grad_(True)
    for value in (angles(u, v).sum(), pairwise_angles(u, v).sum()):
        gu, gv = torch.autograd.grad(value, (u, v))
        assert torch.isfinite(gu).all() and torch.isfinite(gv).all()
    assert angles(u, v).item() == 0.0


def test_cone_similarity(gen: torch.Generator) -> None:
    a, b = random_cones(gen, 4, 6), random_cones(gen, 3, 6)
    sim = cone_similarity(a, b)
    for i in range(4):
        for j in range(3):
            expected = (a.direction[i] @ b.direction[j]) * torch.cos(a.theta[i] - b.theta[j])
            torch.testing.assert_close(sim[i, j], expected)
    torch.testing.assert_close(cone_similarity(a, a).diagonal(), torch.ones(4, dtype=F64))
    assert sim.abs().max() <= 1.0
    # same direction, different aperture: less similar than identical
    wider = ConeParams(a.direction, a.theta + 0.3)
    assert (cone_similarity(a, wider).diagonal() < 1.0 - 1e-3).all()


def test_cone_similarity_gradcheck(gen: torch.Generator) -> None:
    u = torch.randn(3, 4, generator=gen, dtype=F64, requires_grad=True)
    v = torch.randn(2, 4, generator=gen, dtype=F64, requires_grad=True)
    ta = torch.randn(3, generator=gen, dtype=F64, requires_grad=True)
    tb = torch.randn(2, generator=gen, dtype=F64, requires_grad=True)

    def fn(u: torch.Tensor, v: torch.Tensor, ta: torch.Tensor, tb: torch.Tensor) -> torch.Tensor:
        return cone_similarity(cone_from_raw(u, ta, 0.05, 1.2), cone_from_raw(v, tb, 0.05, 1.2))

    assert torch.autograd.gradcheck(fn, (u, v, ta, tb))


def test_containment_gradcheck(gen: torch.Generator) -> None:
    u = torch.randn(4, 3, generator=gen, dtype=F64, requires_grad=True)
    v = torch.randn(4, 3, generator=gen, dtype=F64, requires_grad=True)
    ta = torch.randn(4, generator=gen, dtype=F64, requires_grad=True)
    tb = torch.randn(4, generator=gen, dtype=F64, requires_grad=True)

    def fn(u: torch.Tensor, v: torch.Tensor, ta: torch.Tensor, tb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outer, inner = cone_from_raw(u, ta, 0.05, 3.0), cone_from_raw(v, tb, 0.05, 1.0)
        return containment(outer, inner), pairwise_containment(outer, inner)

    assert torch.autograd.gradcheck(fn, (u, v, ta, tb))


def test_bounded_apertures() -> None:
    raw = torch.tensor([-1e4, -1.0, 0.0, 1.0, 1e4], dtype=F64)
    theta = bound_aperture(raw, 0.05, 1.2)
    assert theta[0] == 0.05 and theta[-1] == 1.2 and torch.all(theta[1:] > theta[:-1])
    c = cone_from_raw(torch.tensor([[3.0, 4.0]]), torch.tensor([0.0]), 0.1, 0.5)
    torch.testing.assert_close(c.direction, torch.tensor([[0.6, 0.8]]))
    torch.testing.assert_close(c.theta, torch.tensor([0.3]))


def test_composition_is_contained_in_each_part(gen: torch.Generator) -> None:
    # 8 compositions of 3 overlapping parts each: directions near a common axis, apertures wide enough to overlap.
    axis = F.normalize(torch.randn(8, 1, 5, generator=gen, dtype=F64), dim=-1)
    direction = F.normalize(axis + 0.05 * torch.randn(8, 3, 5, generator=gen, dtype=F64), dim=-1)
    theta = 0.6 + 0.4 * torch.rand(8, 3, generator=gen, dtype=F64)
    parts = ConeParams(direction, theta)
    weights = torch.rand(8, 3, generator=gen, dtype=F64) + 0.1
    composed = compose_cones(parts, weights)
    assert composed.direction.shape == (8, 5) and composed.theta.shape == (8,)
    assert (composed.theta > 0).all()
    assert (composed.theta <= theta.amin(-1)).all()
    expected_direction = F.normalize((weights[..., None] * direction).sum(1), dim=-1)
    torch.testing.assert_close(composed.direction, expected_direction)
    for n in range(3):
        part = parts.map(lambda t, n=n: t[:, n])
        assert containment(part, composed).max() <= 1e-12
    # and it is the widest such cone around that direction: a little wider sticks out of some part
    wider = ConeParams(composed.direction, composed.theta + 1e-3)
    outside = torch.stack([containment(parts.map(lambda t, n=n: t[:, n]), wider) for n in range(3)]).amax(0)
    assert (outside > 0).all()


def test_composition_of_disjoint_parts_is_a_ray_that_sticks_out() -> None:
    parts = ConeParams(torch.tensor([[unit(0), unit(90)]], dtype=F64), torch.tensor([[0.2, 0.2]], dtype=F64))
    composed = compose_cones(parts)
    torch.testing.assert_close(composed.direction, torch.tensor([unit(45)], dtype=F64))
    assert composed.theta.item() == 0.0
    assert containment(parts.map(lambda t: t[:, 0]), composed).item() == pytest.approx(math.radians(45) - 0.2)


def test_composition_of_one_part_is_itself(gen: torch.Generator) -> None:
    part = random_cones(gen, 4, 3).map(lambda t: t[:, None])
    composed = compose_cones(part)
    torch.testing.assert_close(composed.direction, part.direction[:, 0])
    torch.testing.assert_close(composed.theta, part.theta[:, 0])
