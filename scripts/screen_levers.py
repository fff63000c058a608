"""Screen training levers on ORL identity splits with a short custom loop (a research harness).

The product's trainer (``facetrip/trainer.py``) is the batch-hard triplet loss plus a
cosine-softmax classification term; this script runs the same recipe - the same data
pipeline, model builder and loss functions - in a plain ``tf.function`` loop with knobs
the product does not have, to find out cheaply whether a lever is worth building:

- ``--zoom Z``: random scale by exp(U(-Z, Z)) with the rotation (ORL faces vary in size);
- ``--ramp A``, ``--gamma G``: a random linear lighting gradient of amplitude up to A and
  a random gamma exp(U(-G, G)) (directional light, as in some ORL sessions);
- ``--norm``: per-image standardisation in front of the model (train and test);
- ``--simclr W``: an instance-contrastive (NT-Xent, temperature ``--temp``) term between
  two augmented views, other images of the same identity left out of the negatives;
- ``--train-dev``: train on the dev identities too (30 instead of 25 identities);
- warm-up, joint classification weight, width, size, head, embedding size, dropout,
  learning rate, weight decay, CosFace margin, label smoothing, P and K.

Every ``--eval-every`` epochs it prints one JSON line per split: dev EER, then test EER /
AUC / TAR at FAR = 1% on all pairs of the split's 10 test identities, without and with
flip test-time augmentation (``_tta``); the last line (``FINAL``) is the mean over
splits at the last epoch. Evaluation time is not counted in ``t``. Results in
docs/quality.md ("Screening runs").

Usage::

    # the default recipe on the two hardest splits
    python scripts/screen_levers.py --split 1 2 --width 16 --size 32 26 --epochs 150 --eval-every 150 \
        --joint 1.0 --smooth 0.1 --erase 0.5 --rot 10 --head flatten --tag default
    # plus a lever
    python scripts/screen_levers.py ... --zoom 0.1 --tag zoom
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


p = argparse.ArgumentParser(description="Screen training levers on ORL identity splits (see the module docstring).")
p.add_argument("--split", type=int, nargs="+", default=[0])
p.add_argument("--size", type=int, nargs=2, default=[56, 46])
p.add_argument("--width", type=int, default=32)
p.add_argument("--dim", type=int, default=128)
p.add_argument("--warmup", type=int, default=0)      # CE-only epochs
p.add_argument("--epochs", type=int, default=40)     # triplet epochs
p.add_argument("--joint", type=float, default=0.0)   # CE weight during triplet phase
p.add_argument("--strategy", default="batch_hard")
p.add_argument("--margin", default="0.2")
p.add_argument("--erase", type=float, default=0.0)
p.add_argument("--head", default="pool")
p.add_argument("--cmargin", type=float, default=0.0)
p.add_argument("--smooth", type=float, default=0.0)
p.add_argument("--rot", type=float, default=0.0)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--wd", type=float, default=1e-4)
p.add_argument("--scale", type=float, default=16.0)
p.add_argument("--shift", type=float, default=0.08)
p.add_argument("--P", type=int, default=16)
p.add_argument("--K", type=int, default=4)
p.add_argument("--dropout", type=float, default=0.0)
p.add_argument("--bf16", action="store_true")
p.add_argument("--eval-every", type=int, default=10)
p.add_argument("--tag", default="")
p.add_argument("--norm", action="store_true")
p.add_argument("--simclr", type=float, default=0.0)
p.add_argument("--temp", type=float, default=0.1)
p.add_argument("--zoom", type=float, default=0.0)
p.add_argument("--ramp", type=float, default=0.0)
p.add_argument("--gamma", type=float, default=0.0)
p.add_argument("--train-dev", action="store_true")
p.add_argument("--blend", type=int, default=0, help="add this many synthetic identities, each the pixel average of two training identities")
p.add_argument("--ema", type=float, default=0.0, help="exponential moving average of the weights (momentum; 0: off), evaluated at the end")
p.add_argument("--data-dir", default=None, help="tfds storage folder (default: tfds' own)")
a = p.parse_args()
a.margin = a.margin if a.margin == 'soft' else float(a.margin)

from facetrip.tf_runtime import import_tensorflow
tf = import_tensorflow()
import keras
from facetrip.data import Augmentation, PKSampler, load_faces, pk_dataset, split_identities
from facetrip.data.synthetic import blended_identities
from facetrip.losses import online_triplet_loss
from facetrip.models import build_embedding_model
from facetrip.training import embed_faces
from facetrip.evaluation import pair_distances, verification_summary

faces = load_faces("orl_faces", data_dir=a.data_dir)

results = []
for split_seed in a.split:
    keras.utils.set_random_seed(0)
    split = split_identities(faces.identity_names, dev=5, test=10, seed=split_seed)
    tr = faces.restricted_to(list(split.train) + (list(split.dev) if a.train_dev else []))
    te = faces.restricted_to(split.test)
    dv = faces.restricted_to(split.dev)
    if a.blend:
        tr = blended_identities(tr, a.blend, seed=split_seed)
    ids = np.unique(tr.labels)
    sampler = PKSampler(tr.labels, a.P, a.K, seed=0)
    steps = sampler.batches_per_epoch
    total_epochs = a.warmup + a.epochs
    aug = Augmentation(True, a.shift, 0.1, 0.2)
    ds = pk_dataset(tr, sampler, tuple(a.size), 1, epochs=total_epochs, augmentation=aug)
    if a.bf16:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    core = build_embedding_model((*a.size, 1), a.dim, width=a.width, dropout=a.dropout, head=a.head)
    if a.norm:
        inp = keras.Input((*a.size, 1))
        mu = keras.ops.mean(inp, axis=(1, 2, 3), keepdims=True)
        sd = keras.ops.std(inp, axis=(1, 2, 3), keepdims=True)
        model = keras.Model(inp, core((inp - mu) / (sd + 1e-3) * 0.25 + 0.5))
    else:
        model = core
    keras.mixed_precision.set_global_policy("float32")
    class_weights = tf.Variable(tf.random.normal([a.dim, len(ids)], stddev=0.05))
    lut = tf.constant(np.searchsorted(ids, np.arange(ids.max() + 1)).astype(np.int64))
    sched = keras.optimizers.schedules.CosineDecay(a.lr, total_epochs * steps, alpha=0.01)
    opt = keras.optimizers.AdamW(sched, weight_decay=a.wd, use_ema=a.ema > 0, ema_momentum=a.ema or 0.99)
    variables = model.trainable_variables + [class_weights]
    opt.build(variables)

    def erase(images):
        B, H, W = tf.shape(images)[0], a.size[0], a.size[1]
        if a.ramp > 0:
            th = tf.random.uniform([B, 1, 1, 1], 0, 6.2832)
            amp = tf.random.uniform([B, 1, 1, 1], 0, a.ramp)
            xx_ = tf.linspace(-1.0, 1.0, W)[None, None, :, None]; yy_ = tf.linspace(-1.0, 1.0, H)[None, :, None, None]
            images = tf.clip_by_value(images * (1 + amp * (tf.cos(th) * xx_ + tf.sin(th) * yy_)), 0, 1)
        if a.gamma > 0:
            images = tf.pow(tf.maximum(images, 1e-4), tf.exp(tf.random.uniform([B, 1, 1, 1], -a.gamma, a.gamma)))
        if a.rot > 0 or a.zoom > 0:
            ang = tf.random.uniform([B], -a.rot, a.rot) * 3.14159 / 180
            zf = tf.exp(tf.random.uniform([B], -a.zoom, a.zoom))
            c, s_ = tf.cos(ang) / zf, tf.sin(ang) / zf
            cx, cy = W / 2, H / 2
            z = tf.zeros_like(c)
            tr = tf.stack([c, -s_, cx - c * cx + s_ * cy, s_, c, cy - s_ * cx - c * cy, z, z], 1)
            images = tf.raw_ops.ImageProjectiveTransformV3(images=images, transforms=tr, output_shape=[H, W], fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")
        if a.erase > 0:
            eh = tf.cast(tf.random.uniform([B], 0.1, 0.5) * H, tf.int32)
            ew = tf.cast(tf.random.uniform([B], 0.1, 0.5) * W, tf.int32)
            y0 = tf.cast(tf.random.uniform([B]) * tf.cast(H - eh, tf.float32), tf.int32)
            x0 = tf.cast(tf.random.uniform([B]) * tf.cast(W - ew, tf.float32), tf.int32)
            yy = tf.range(H)[None, :, None]; xx = tf.range(W)[None, None, :]
            m = (yy >= y0[:, None, None]) & (yy < (y0 + eh)[:, None, None]) & (xx >= x0[:, None, None]) & (xx < (x0 + ew)[:, None, None])
            m = m & (tf.random.uniform([B, 1, 1]) < a.erase)
            images = tf.where(m[..., None], tf.random.uniform(tf.shape(images)), images)
        return images

    @tf.function
    def step(images, labels, ce_w, tr_w):
        raw = images
        images = erase(raw)
        with tf.GradientTape() as tape:
            emb = model(images, training=True)
            if a.simclr > 0:
                emb2 = model(erase(raw), training=True)
                n = tf.shape(emb)[0]
                z = tf.concat([emb, emb2], 0)
                ll = tf.concat([labels, labels], 0)
                same_other = tf.cast(tf.equal(ll[:, None], ll[None, :]), tf.float32) - tf.eye(2 * n)
                pos_mask = tf.one_hot(tf.concat([tf.range(n, 2 * n), tf.range(n)], 0), 2 * n)
                sims = tf.matmul(z, z, transpose_b=True) / a.temp - 1e9 * tf.eye(2 * n) - 1e9 * (same_other - pos_mask)
                target = tf.concat([tf.range(n, 2 * n), tf.range(n)], 0)
                nce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(target, sims))
            else:
                nce = 0.0
            w = tf.math.l2_normalize(class_weights, axis=0)
            logits = a.scale * (tf.matmul(emb, w) - a.cmargin * tf.one_hot(tf.gather(lut, labels), len(ids)))
            onehot = tf.one_hot(tf.gather(lut, labels), len(ids)) * (1 - a.smooth) + a.smooth / len(ids)
            ce = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(onehot, logits))
            trip = online_triplet_loss(labels, emb, a.strategy, a.margin)
            loss = ce_w * ce + tr_w * trip + a.simclr * nce
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables))
        return ce, trip

    def evaluate(subset, tta):
        e = embed_faces(model, subset, a.size, 1)
        if tta:
            import facetrip.data as fd
            imgs = np.concatenate([x.numpy() for x, _ in fd.image_dataset(subset, tuple(a.size), 1)])
            e = model.predict(imgs, verbose=0) + model.predict(imgs[:, :, ::-1], verbose=0)
            e /= np.linalg.norm(e, axis=1, keepdims=True)
        d, s = pair_distances(e, subset.labels)
        return verification_summary(d, s)

    t0 = time.time()
    it = iter(ds)
    log = []
    for epoch in range(total_epochs):
        warm = epoch < a.warmup
        ce_w = 1.0 if warm else a.joint
        tr_w = 0.0 if warm else 1.0
        for _ in range(steps):
            x, y = next(it)
            ce, trip = step(x, y, tf.constant(ce_w), tf.constant(tr_w))
        if a.ema > 0 and epoch + 1 == total_epochs:
            opt.finalize_variable_values(variables)  # the averaged weights replace the last ones
        if (epoch + 1) % a.eval_every == 0 or epoch + 1 == total_epochs:
            t = time.time() - t0
            dev = evaluate(dv, False)
            test = evaluate(te, False)
            test_tta = evaluate(te, True)
            row = dict(epoch=epoch + 1, t=round(t), ce=float(ce), trip=float(trip), dev_eer=dev["eer"],
                       eer=test["eer"], auc=test["auc"], tar1=test["tar_at_far_1pct"], eer_tta=test_tta["eer"],
                       auc_tta=test_tta["auc"], tar1_tta=test_tta["tar_at_far_1pct"])
            print(split_seed, json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
            log.append(row)
            t0 += time.time() - t - t0  # exclude eval time
    results.append(log[-1])
final = {k: float(np.mean([r[k] for r in results])) for k in results[0]}
print("FINAL", a.tag, vars(a), json.dumps({k: round(v, 4) for k, v in final.items()}), flush=True)
