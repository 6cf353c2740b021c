import torch

from bench.noise import NoiseSource, StepNoise


def test_an_image_gets_the_same_noise_whatever_its_batch():
    source = NoiseSource(7)
    whole = source.normal(torch.arange(0, 32), (1, 8, 8), step=5)
    part = source.normal(torch.arange(20, 25), (1, 8, 8), step=5)
    assert torch.equal(whole[20:25], part)


def test_initial_noise_depends_on_seed_and_image_only():
    a = NoiseSource(1).initial(torch.tensor([3]), (4,))
    assert torch.equal(a, NoiseSource(1).initial(torch.tensor([3]), (4,)))
    assert not torch.equal(a, NoiseSource(2).initial(torch.tensor([3]), (4,)))
    assert not torch.equal(a, NoiseSource(1).initial(torch.tensor([4]), (4,)))
    assert not torch.equal(a, NoiseSource(1).normal(torch.tensor([3]), (4,), step=0))


def test_reference_values_are_stable_across_platforms():
    # Pinned: a change here silently changes every result ever published with this seed.
    got = NoiseSource(0).normal(torch.tensor([0, 17]), (3,), step=0)
    expected = torch.tensor([[-0.028496830, -0.647654653, -0.832388699], [-1.559866548, -1.870613694, -2.031926155]])
    assert torch.allclose(got, expected, atol=1e-6)


def test_noise_is_standard_normal_and_uncorrelated():
    z = NoiseSource(3).normal(torch.arange(2000), (256,), step=1).double()
    assert abs(float(z.mean())) < 0.005
    assert abs(float(z.std()) - 1) < 0.005
    assert abs(float((z[:, 1:] * z[:, :-1]).mean())) < 0.005
    assert abs(float((z[1:] * z[:-1]).mean())) < 0.005
    fourth = float((z**4).mean())
    assert abs(fourth - 3) < 0.05


def test_step_noise_blocks_match_single_draws():
    source = NoiseSource(0)
    step_noise = StepNoise(source, torch.arange(4), (2, 3))
    for step in (0, 1, 15, 16, 40, 3):
        assert torch.equal(step_noise(step), source.normal(torch.arange(4), (2, 3), step))
