import numpy as np
import pytest
import torch
from toy_data import synthetic_inputs

from lgcd_core.config import LGCDConfig
from lgcd_core.model.batches import NEVER, OVERLAP, PSEUDO, ItemIndex, build_direction
from lgcd_core.model.encoders import DomainEncoder, EncoderSpec
from lgcd_core.model.lgcd import Denoiser, LGCDModel, MoEFusion


@pytest.fixture(scope="module")
def toy():
    data = synthetic_inputs(n_overlap=20, n_a_only=10, n_b_only=10, n_valid=4, seed=1)
    index = ItemIndex.from_table(data["items"])
    return data, index


SMALL = LGCDConfig.model_validate({"diffusion": {"T": 10}, "architecture": {"n_heads": 4, "n_experts": 3, "max_len": 20,
                                                                           "dropout": 0.0}})


def _model(index, data, updates: dict | None = None):
    """A small LGCD model on fresh toy encoders, the same weights for every ``updates`` (dotted config fields)."""
    torch.manual_seed(0)
    encs = {d: DomainEncoder(EncoderSpec(d, index.n_domain(d), data["embeddings"].shape[1], d=16, n_layers=1,
                                         max_len=20, dropout=0.0), index.text_rows(data["embeddings"], d))
            for d in "AB"}
    return LGCDModel(SMALL.with_updates(updates or {}), encs)


def _batch(data, index, targets: str = "all"):
    dd = build_direction(index, "A", data["sequences"], data["pseudo_overlap"], 20, targets)
    return dd.batch(np.arange(len(dd)))


def _losses(data, index, updates: dict | None = None, backward: bool = False):
    """Losses of one A->B batch of every training row, with a fixed generator."""
    model = _model(index, data, updates).train()
    out = model("AB", _batch(data, index), torch.Generator().manual_seed(0))
    if backward:
        out["total"].backward()
    return out, model


def test_denoiser_depends_on_condition_and_respects_mask():
    torch.manual_seed(0)
    den = Denoiser(16, 4, 0.0).eval()
    x, z1, z2 = torch.randn(3, 16), torch.randn(3, 5, 16), torch.randn(3, 5, 16)
    allowed = torch.tensor([[True] * 5, [True, True, False, False, False], [False] * 4 + [True]])
    out1 = den(x, 4, *den.attn.kv(z1), allowed)
    out2 = den(x, 4, *den.attn.kv(z2), allowed)
    assert (out1 - out2).abs().amax(-1).min() > 1e-4  # the condition changes every prediction
    z3 = z1.clone()
    z3[1, 2:] = torch.randn(3, 16)  # only masked keys of row 1 change
    out3 = den(x, 4, *den.attn.kv(z3), allowed)
    assert torch.allclose(out3[1], out1[1], atol=1e-6)
    assert not torch.allclose(den(x, 2, *den.attn.kv(z1), allowed), out1)  # and on t


def test_moe_gate_sums_to_one_and_reads_only_the_condition():
    torch.manual_seed(0)
    moe = MoEFusion(8, 5)
    h_cond, h_rev = torch.randn(4, 8), torch.randn(4, 8)
    g = moe.gates(h_cond)
    assert torch.allclose(g.sum(-1), torch.ones(4)) and (g > 0).all()
    assert not torch.allclose(moe(h_cond, h_rev), moe(h_cond, torch.randn(4, 8)))
    # gates are a function of h_cond alone: recompute the mixture by hand with the same gates
    x = torch.cat([h_cond, h_rev], -1)
    experts = torch.stack([torch.nn.functional.gelu(x @ moe.w1[e] + moe.b1[e]) @ moe.w2[e] + moe.b2[e] for e in range(5)], 1)
    assert torch.allclose((g[..., None] * experts).sum(1), moe(h_cond, h_rev), atol=1e-5)


def test_pseudo_condition_is_id_only(toy):
    data, index = toy
    model = _model(index, data).eval()
    src = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]])
    pseudo = torch.tensor([False, True])
    z = model.condition_tokens("A", src, pseudo)
    model.enc["A"].text_vectors[1:4] += 1.0  # change only the text side of the source items
    z2 = model.condition_tokens("A", src, pseudo)
    assert not torch.allclose(z[0], z2[0])  # overlap: ID + text fusion
    assert torch.allclose(z[1], z2[1])  # pseudo: ID only


def test_target_feature_never_reads_the_target(toy):
    data, index = toy
    model = _model(index, data).eval()
    tgt = torch.tensor([[0, 4, 5, 6, 7]])
    x0, has = model.target_features("B", tgt)
    tgt2 = tgt.clone()
    tgt2[0, 3:] = torch.tensor([9, 10])
    x0b, _ = model.target_features("B", tgt2)
    assert torch.allclose(x0[0, :4], x0b[0, :4], atol=1e-6)  # slot 3 reads items before it only
    assert has.tolist() == [[False, False, True, True, True]]


def test_condition_ignores_later_source_items(toy):
    data, index = toy
    model = _model(index, data).eval()
    batch = {"src": torch.tensor([[1, 2, 3]]), "src_pos": torch.tensor([[0, 2, 4]]),
             "tgt_pos": torch.tensor([[1, 3, NEVER]]), "label": torch.tensor([[True, True, False]])}
    sel = model._select("AB", batch["src"], batch["src_pos"], batch["tgt_pos"], batch["label"], torch.tensor([False]))
    z = model.condition_tokens("A", batch["src"], torch.tensor([False]))
    assert sel.query.tolist() == [0, 1]
    assert torch.allclose(sel.h_cond[0], z[0, 0]) and torch.allclose(sel.h_cond[1], z[0, 1])


SWITCHES = ["use_diffusion", "overlap_diffusion", "pseudo_diffusion", "alignment_loss", "guesser", "moe"]


@pytest.mark.parametrize("off", [None] + SWITCHES)
def test_losses_finite_for_every_ablation(toy, off):
    data, index = toy
    out, model = _losses(data, index, {f"ablations.{off}": False} if off else {})
    assert all(torch.isfinite(v) for v in out.values())
    if off == "use_diffusion":
        assert out["diff"] == 0 and out["align"] == 0 and out["guess"] == 0
    if off == "alignment_loss":
        assert out["align"] == 0
    if off is None:
        assert out["diff"] > 0 and out["align"] > 0 and out["guess"] > 0
    out["total"].backward()
    assert all(p.grad is None for p in model.enc.parameters())  # frozen encoders


def test_a_detached_reverse_process_is_trained_by_its_own_losses_only(toy):
    """``rec_trains_generator: false``: L_rec moves the fusion but not the denoiser."""
    data, index = toy
    only_rec = {"loss_weights.diff": 0.0, "loss_weights.guess": 0.0, "ablations.alignment_loss": False}

    def grad_norms(updates: dict) -> dict[str, float]:
        _, model = _losses(data, index, {**only_rec, **updates}, backward=True)
        head = model.heads["AB"]
        return {name: sum(float(p.grad.abs().sum()) for p in part.parameters() if p.grad is not None)
                for name, part in (("denoiser", head.denoiser), ("guesser", head.guesser), ("fusion", head.fusion))}

    attached, detached = grad_norms({}), grad_norms({"ablations.rec_trains_generator": False})
    assert attached["denoiser"] > 0  # by default L_rec reaches the denoiser (through the chain's last jump)
    assert detached["denoiser"] == 0 and detached["guesser"] == 0 and detached["fusion"] > 0
    with_diff = grad_norms({"ablations.rec_trains_generator": False, "loss_weights.diff": 1.0})
    assert with_diff["denoiser"] > 0  # and L_diff still trains it


@pytest.mark.parametrize("updates", [{}, {"diffusion.sampler_steps": None}, {"diffusion.inference_draws": 3}])
def test_scores_do_not_depend_on_batch_size_or_composition(toy, updates):
    """With the noised start on: a user's ε is seeded by their own history, not by the batch."""
    data, index = toy
    model = _model(index, data, updates).eval()
    src = torch.tensor([[0, 0, 1, 2], [3, 4, 5, 6], [0, 0, 0, 0], [0, 0, 0, 7]])
    with torch.no_grad():
        full = model.scores("AB", src)
        rows = torch.cat([model.scores("AB", src[i:i + 1]) for i in range(4)])
        reordered = model.scores("AB", src[[3, 1, 0, 2]])[[2, 1, 3, 0]]
        others = torch.tensor([[8, 9, 10, 11], [0, 2, 1, 3]])
        mixed = model.scores("AB", torch.cat([others, src]))[2:]
        padded = model.scores("AB", torch.cat([torch.zeros(4, 3, dtype=torch.long), src], 1))  # more left padding
    for other_batch in (rows, reordered, mixed, padded):
        assert torch.allclose(full, other_batch, atol=1e-5)
    assert torch.isfinite(full[:, 1:]).all() and full.shape == (4, index.n_domain("B") + 1)
    assert not torch.allclose(full[0], full[3])  # different users, different scores


# ---- the noised warm start and the sampler (eq. 18-20) -------------------------------------------


def test_warm_start_is_on_the_training_distribution_at_t_start(toy):
    """x_{t_s} = √ᾱ g + √(1-ᾱ) ε with ε ~ N(0, I): with a right guess (x0 itself), its norm matches the
    denoiser's training inputs at t_s on average; the old ε = 0 start had norm √ᾱ‖x0‖, far below."""
    data, index = toy
    model = _model(index, data, {"diffusion.T": 100, "diffusion.lambda_B": 0.5}).eval()  # ᾱ_50 = 0.62
    gen = torch.Generator().manual_seed(3)
    src = torch.randint(1, index.n_domain("A") + 1, (2000, 6), generator=gen)
    x0 = 0.5 * torch.randn(2000, model.d, generator=gen)
    with torch.no_grad():
        sel = model._select("AB", src, torch.arange(6).expand(2000, 6), torch.full((2000, 1), 99),
                            torch.ones(2000, 1, dtype=torch.bool), torch.zeros(2000, dtype=torch.bool))
        noise = model.inference_noise("AB", src)
        start = model._start(sel.head, sel.h_cond, "B", False, noise, x0, torch.ones(2000, dtype=torch.bool))
    t_s = model.schedule.start_step(model.lam("B"))
    assert start.t_start == t_s and start.x_start.shape == (1, 2000, model.d)
    ab = model.schedule.alpha_bars[t_s].item()
    train_inputs = model.schedule.add_noise(x0, torch.randn(x0.shape, generator=gen), t_s)
    norm_start, norm_train = start.x_start[0].norm(dim=1).mean(), train_inputs.norm(dim=1).mean()
    assert norm_start == pytest.approx(norm_train.item(), rel=0.03)
    assert ab ** 0.5 * x0.norm(dim=1).mean() < 0.7 * norm_train  # what ε = 0 gave
    eps = (start.x_start[0] - ab ** 0.5 * x0) / (1 - ab) ** 0.5  # the drawn ε: standard normal
    assert abs(eps.mean()) < 0.02 and eps.var().item() == pytest.approx(1.0, abs=0.03)


def test_training_reverse_starts_from_the_noised_guess(toy, monkeypatch):
    """L_rec and L_align see the same start distribution as inference: the detached guess plus √(1-ᾱ) ε."""
    data, index = toy
    model = _model(index, data).train()
    seen = {}
    reverse = LGCDModel.reverse

    def spy(self, head, x_start, t_start, *args, **kwargs):
        seen["x_start"], seen["t_start"], seen["guess"] = x_start, t_start, head.guesser(seen["h_cond"]).detach()
        return reverse(self, head, x_start, t_start, *args, **kwargs)

    select = LGCDModel._select

    def spy_select(self, *args):
        sel = select(self, *args)
        seen["h_cond"] = sel.h_cond
        return sel

    monkeypatch.setattr(LGCDModel, "reverse", spy)
    monkeypatch.setattr(LGCDModel, "_select", spy_select)
    model("AB", _batch(data, index), torch.Generator().manual_seed(0))
    ab = model.schedule.alpha_bars[seen["t_start"]].item()
    eps = (seen["x_start"] - ab ** 0.5 * seen["guess"]) / (1 - ab) ** 0.5
    assert seen["t_start"] == model.schedule.start_step(model.lam("B"))
    assert abs(eps.mean()) < 0.1 and eps.var().item() == pytest.approx(1.0, abs=0.15)


def test_same_seed_same_scores_and_draws_average(toy):
    data, index = toy
    src = torch.tensor([[0, 0, 1, 2], [3, 4, 5, 6], [0, 0, 0, 7]])
    with torch.no_grad():
        model = _model(index, data).eval()
        one = model.scores("AB", src)
        assert torch.equal(one, _model(index, data).eval().scores("AB", src))  # same seed: same scores
        reseeded = _model(index, data, {"training.seed": 5}).eval()  # same weights, another noise seed
        assert not torch.allclose(reseeded.scores("AB", src), one, atol=1e-5)
        # S draws: the first draw is the S = 1 draw; the user vector is the mean over draws of h_final
        inf = model.infer("AB", src, draws=3)
        assert inf.h_rev.shape == (3, 3, model.d) and not torch.allclose(inf.h_rev[0], inf.h_rev[1])
        assert torch.allclose(inf.h_rev[0], model.infer("AB", src).h_rev[0])
        per_draw = torch.stack([model.fuse(inf, 3, inf.h_rev[i:i + 1]) for i in range(3)])
        assert torch.allclose(model.fuse(inf, 3), per_draw.mean(0), atol=1e-6)
        three = _model(index, data, {"diffusion.inference_draws": 3}).eval()
        assert torch.allclose(three.user_vectors("AB", src), per_draw.mean(0), atol=1e-6)
        assert not torch.allclose(three.scores("AB", src), one, atol=1e-5)


@pytest.mark.parametrize("steps", [None, 1, 3])
def test_sampler_steps_set_the_denoiser_calls_in_training_and_inference(toy, steps):
    data, index = toy
    model = _model(index, data, {"diffusion.sampler_steps": steps})
    t_s = model.schedule.start_step(model.lam("B"))  # T = 10, λ_B = 0.3: 3
    expected = t_s if steps is None else min(steps, t_s)
    assert model.denoiser_calls("B") == expected
    calls = []
    model.heads["AB"].denoiser.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model.eval().scores("AB", torch.tensor([[1, 2, 3]]))
    assert len(calls) == expected
    calls.clear()
    model.train()("AB", _batch(data, index), torch.Generator().manual_seed(0))
    assert len(calls) == expected + 1  # the reverse chain, and L_diff's one call


def test_ddim_sampler_changes_the_chain_and_one_step_returns_the_first_prediction(toy):
    data, index = toy
    src = torch.tensor([[0, 0, 1, 2], [3, 4, 5, 6]])
    with torch.no_grad():
        full = _model(index, data, {"diffusion.sampler_steps": None, "diffusion.lambda_B": 0.5}).eval()
        ddim = _model(index, data, {"diffusion.sampler_steps": 2, "diffusion.lambda_B": 0.5}).eval()
        one = _model(index, data, {"diffusion.sampler_steps": 1, "diffusion.lambda_B": 0.5}).eval()
        assert not torch.allclose(full.scores("AB", src), ddim.scores("AB", src), atol=1e-5)
        inf = one.infer("AB", src)
        sel = one._select("AB", src, torch.where(src != 0, torch.arange(4), NEVER), torch.full((2, 1), NEVER + 1),
                          torch.ones(2, 1, dtype=torch.bool), torch.zeros(2, dtype=torch.bool))
        start = one._start(sel.head, sel.h_cond, "B", False, one.inference_noise("AB", src))
        x0_hat = sel.head.denoiser(start.x_start[0], start.t_start, sel.k, sel.v, sel.allowed)
        assert torch.allclose(inf.h_rev[0], x0_hat, atol=1e-6)  # one jump t_s -> 0 returns x̂0


def test_reverse_noise_switch_was_removed():
    with pytest.raises(ValueError, match="reverse_noise' was removed"):
        LGCDConfig.model_validate({"interpretation": {"reverse_noise": False}})


# ---- interpretation switches and loss weights: what each one changes ----------------------------


def test_pseudo_condition_full_reads_text_like_real_rows(toy):
    data, index = toy
    model = _model(index, data, {"interpretation.pseudo_condition": "full"}).eval()
    src = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]])
    z = model.condition_tokens("A", src, torch.tensor([False, True]))
    assert torch.equal(z[0], z[1])  # the pseudo row is conditioned exactly like the real one
    model.enc["A"].text_vectors[1:4] += 1.0
    assert not torch.allclose(model.condition_tokens("A", src, torch.tensor([False, True]))[1], z[1])


def test_condition_tokens_last_attends_to_h_cond_alone(toy):
    data, index = toy
    batch = _batch(data, index)
    args = ("AB", batch["src"], batch["src_pos"], batch["tgt_pos"], batch["label"], batch["kind"] == PSEUDO)
    sequence = _model(index, data)._select(*args)
    last_model = _model(index, data, {"interpretation.condition_tokens": "last"})
    last = last_model._select(*args)
    assert torch.equal(last.h_cond, sequence.h_cond) and torch.equal(last.row, sequence.row)
    assert sequence.k.shape[2] == batch["src"].shape[1] and last.k.shape[2] == 1 and last.allowed.all()
    k, v = last_model.heads["AB"].denoiser.attn.kv(last.h_cond[:, None, :])
    assert torch.equal(last.k, k) and torch.equal(last.v, v)
    out_seq, _ = _losses(data, index)
    out_last, _ = _losses(data, index, {"interpretation.condition_tokens": "last"})
    assert out_last["diff"] != out_seq["diff"] and out_last["rec"] != out_seq["rec"]


def test_align_on_chooses_the_rows_of_l_align(toy):
    data, index = toy
    batch = _batch(data, index)
    pseudo_rows = batch["kind"] == PSEUDO
    sel = _model(index, data)._select("AB", batch["src"], batch["src_pos"], batch["tgt_pos"], batch["label"], pseudo_rows)
    n_pseudo = int(pseudo_rows[sel.row].sum())
    n_overlap = len(sel.row) - n_pseudo
    assert n_pseudo > 0 and n_overlap > 0
    align = {on: _losses(data, index, {"interpretation.align_on": on})[0]["align"].detach().item()
             for on in ("pseudo", "overlap", "both")}
    assert align["pseudo"] != pytest.approx(align["overlap"])
    # the same h_rev and h_cond in every run: 'both' is the row-weighted mean of the two others
    both = (n_pseudo * align["pseudo"] + n_overlap * align["overlap"]) / (n_pseudo + n_overlap)
    assert align["both"] == pytest.approx(both, rel=1e-5)


def test_loss_weights_scale_their_terms(toy):
    data, index = toy
    base, _ = _losses(data, index)
    weights = {"loss_weights.diff": 0.0, "loss_weights.guess": 0.0, "loss_weights.align": 2.0}
    out, model = _losses(data, index, weights, backward=True)
    for term in ("rec", "diff", "guess", "align"):
        assert out[term] == base[term]  # the terms themselves do not change, only their sum
    assert torch.allclose(out["total"], out["rec"] + 2.0 * out["align"])
    # the guesser is trained by L_guess alone (the reverse chain starts from the detached guess)
    assert all(p.grad is None or not p.grad.any() for p in model.heads["AB"].guesser.parameters())
    _, trained = _losses(data, index, backward=True)
    assert any(p.grad is not None and p.grad.any() for p in trained.heads["AB"].guesser.parameters())
    # pseudo_rec weighs the L_rec of pseudo rows: 0 leaves the real overlap rows alone
    no_pseudo, _ = _losses(data, index, {"loss_weights.pseudo_rec": 0.0})
    assert no_pseudo["rec"] != base["rec"] and no_pseudo["diff"] == base["diff"]


def test_unfrozen_encoders_train_with_their_own_learning_rate(toy):
    data, index = toy
    out, model = _losses(data, index, {"training.freeze_encoders": False, "training.encoder_lr": 5e-5}, backward=True)
    assert any(p.grad is not None and p.grad.any() for p in model.enc.parameters())
    groups = model.trainable_parameters()
    assert [g["lr"] for g in groups] == [SMALL.training.lr, 5e-5]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.enc.parameters()}
    assert model.train().enc.training  # dropout on, unlike frozen encoders
    frozen = _model(index, data).train()
    assert len(frozen.trainable_parameters()) == 1 and not frozen.enc.training


def test_targets_choose_the_l_rec_targets(toy):
    data, index = toy
    rows = {t: build_direction(index, "A", data["sequences"], data["pseudo_overlap"], 20, t)
            for t in ("all", "last_per_domain", "last")}
    real = {t: d.label[d.kind == OVERLAP] for t, d in rows.items()}
    assert (real["last_per_domain"].sum(1) == 1).all() and (real["last"].sum(1) == 1).all()
    assert real["all"].sum() > real["last_per_domain"].sum() > real["last"].sum() > 0
    # 'last' (paper-literal): only sequences that end in the target domain, with that item as the target
    overlap = [s for s, u in zip(data["sequences"].column("items").to_pylist(),
                                 data["sequences"].column("user_type").to_pylist()) if u == "overlap"]
    ends_in_b = sum(index.domain_code[s[-1]] == 1 and any(index.domain_code[i] == 0 for i in s) for s in overlap)
    assert len(real["last"]) == ends_in_b
    assert real["last"][:, -1].all()  # the last target-domain slot


def test_schedule_reaches_the_model(toy):
    data, index = toy
    model = _model(index, data, {"diffusion.schedule": "linear", "diffusion.beta_max": 0.05})
    assert torch.allclose(model.schedule.betas[1:], torch.linspace(1e-4, 0.05, 10, dtype=torch.float64))


def test_rec_loss_sampled_softmax_against_a_hand_computed_case(toy):
    data, index = toy
    h = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 2])
    model = _model(index, data, {"training.rec_negatives": 3})
    gen_seed = 7
    neg = torch.randint(0, 4, (3,), generator=torch.Generator().manual_seed(gen_seed))
    got = model.rec_loss(h, items, labels, torch.Generator().manual_seed(gen_seed))
    for row in range(2):  # log-sum-exp over the target and the draws that are not the target, minus the target's logit
        logits = [float(h[row] @ items[labels[row]])] + [float(h[row] @ items[j]) for j in neg if j != labels[row]]
        expected = np.log(np.sum(np.exp(logits))) - logits[0]
        assert got[row].item() == pytest.approx(expected, rel=1e-5)
    # as many negatives as items or more: the paper's full softmax, no draw
    full = _model(index, data, {"training.rec_negatives": 4}).rec_loss(h, items, labels, None)
    assert torch.allclose(full, torch.nn.functional.cross_entropy(h @ items.T, labels, reduction="none"))
    # and the loss of a training batch changes with the option while staying finite
    base, _ = _losses(data, index)
    sampled, _ = _losses(data, index, {"training.rec_negatives": 5})
    assert torch.isfinite(sampled["rec"]) and sampled["rec"] != base["rec"]


def test_x0_is_never_a_path_for_gradients_even_with_unfrozen_encoders(toy):
    """L_diff and L_guess must not move the encoders towards an easy x0 (issue 23 point 2)."""
    data, index = toy
    model = _model(index, data, {"training.freeze_encoders": False, "loss_weights.diff": 1.0}).train()
    out = model("AB", _batch(data, index), torch.Generator().manual_seed(0))
    assert out["diff"] > 0
    out["diff"].backward()
    text_b = [p.grad for p in model.enc["B"].text_encoder.parameters()]
    assert all(g is None or float(g.abs().sum()) == 0.0 for g in text_b)  # x0 comes from B's text encoder


def test_x0_including_gives_every_target_an_x0(toy):
    data, index = toy
    batch = _batch(data, index)
    x0s = {}
    for reading in ("preceding", "including"):
        model = _model(index, data, {"interpretation.x0": reading}).eval()
        x0, has = model.target_features("B", batch["tgt"])
        first = (batch["tgt"] != 0).int().argmax(1)  # the first real slot of every row
        rows = torch.arange(len(first))
        assert bool(has[rows, first].all()) is (reading == "including")
        assert torch.equal(has[:, 1:] if reading == "preceding" else has, (batch["tgt"][:, :-1] != 0)
                           if reading == "preceding" else batch["tgt"] != 0)
        x0s[reading] = x0
    assert torch.allclose(x0s["preceding"][:, 1:], x0s["including"][:, :-1])  # one slot apart, same encoder


def test_the_oracle_feeds_the_true_x0_to_the_fusion(toy, monkeypatch):
    data, index = toy
    seen = {}
    for oracle in (False, True):
        model = _model(index, data, {"ablations.oracle_x0": oracle}).train()
        fusion = model.heads["AB"].fusion
        monkeypatch.setattr(fusion, "forward", lambda h_cond, h_rev, oracle=oracle: seen.setdefault(oracle, h_rev) * 0 + h_cond)
        batch = _batch(data, index)
        model("AB", batch, torch.Generator().manual_seed(0))
    model = _model(index, data).eval()
    sel = model._select("AB", batch["src"], batch["src_pos"], batch["tgt_pos"], batch["label"], batch["kind"] == PSEUDO)
    x0, has = model.target_features("B", batch["tgt"])
    x0, has = x0[sel.row, sel.query], has[sel.row, sel.query]
    assert has.any() and (~has).any()
    assert torch.allclose(seen[True][has], x0[has])  # the oracle's h_rev is x0 where there is one
    assert not torch.allclose(seen[False][has], x0[has])  # the generator's is not
    assert torch.allclose(seen[True][~has], seen[False][~has])  # elsewhere the generator's, the same draws


def test_the_oracle_scores_with_the_true_x0_of_a_target_history(toy):
    """At inference the oracle's h_rev is x0 of the history's target items (eq. 7), the generator's elsewhere."""
    data, index = toy
    model = _model(index, data, {"ablations.oracle_x0": True}).eval()
    src = torch.tensor([[0, 1, 2], [3, 1, 2]])
    tgt = torch.tensor([[0, 0, 0], [0, 4, 2]])  # the first row has no target-domain history
    with torch.no_grad():
        inf = model.infer("AB", src, tgt)
        x0, has = model.x0_after("B", tgt, torch.zeros(2, dtype=torch.long))
        plain = model.infer("AB", src)
    assert has.tolist() == [False, True]
    assert torch.allclose(inf.h_rev[0, 1], x0[1]) and torch.allclose(inf.h_rev[0, 0], plain.h_rev[0, 0])
