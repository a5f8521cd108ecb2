#!/usr/bin/python3
"""Train classifiers on encrypted embeddings: the vecseal story on a real labelled dataset.

Production holds the model key (inside vecseald's HSM) and encrypts every embedding one-way. A
data scientist, who never sees a plaintext embedding or the key, trains ordinary models on the
encrypted vectors. Those models work on inputs encrypted under the same key, and are useless on
anything else.

The dataset is scikit-learn's bundled handwritten digits (1797 8×8 images, 10 classes); each image,
L2-normalised, stands in for an embedding. Every number printed is measured in this run.

    export VECSEAL_SOCKET=/tmp/vecseal-dev/vecseald.sock   # a `vecseald --dev` daemon
    /usr/bin/python3 examples/encrypted_training.py

Needs numpy and scikit-learn (Debian: python3-numpy python3-sklearn). Without the vecseal package
installed it imports the client from this repository's clients/python/.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier

try:
    import vecseal
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients",
                                    "python"))
    import vecseal

CHANCE = 0.10  # ten balanced classes


def load_embeddings(seed):
    """The digits as unit-norm "embeddings", split 75/25 with every class in both parts."""
    images, labels = load_digits(return_X_y=True)
    embeddings = (images / np.linalg.norm(images, axis=1, keepdims=True)).astype(np.float32)
    return train_test_split(embeddings, labels, test_size=0.25, random_state=seed,
                            stratify=labels)


def ensure_key(client, name, beta):
    """Creates the model key, or reuses it if an earlier run on this daemon made it."""
    try:
        return client.create_key(name, approximation_factor=beta, transform="rotate")
    except vecseal.KeyExists:
        key = next(k for k in client.keys() if k.name == name)
        if key.approximation_factor != beta:
            sys.exit(f"key {name} exists with β {key.approximation_factor}, not {beta}")
        return key


def train(train_x, train_y):
    """The data scientist's models: the same settings for plaintext and encrypted data."""
    return {
        "logistic regression": LogisticRegression(max_iter=2000).fit(train_x, train_y),
        "5-NN": KNeighborsClassifier(n_neighbors=5).fit(train_x, train_y),
    }


def accuracies(models, test_x, test_y):
    return {name: float(model.score(test_x, test_y)) for name, model in models.items()}


def row(label, scores):
    return f"  {label:<34}" + "".join(f"{score:>22.3f}" for score in scores.values())


def header(models):
    return f"  {'':<34}" + "".join(f"{name:>22}" for name in models)


def pair(scores):
    return " / ".join(f"{score:.3f}" for score in scores.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", help="vecseald's socket (default: $VECSEAL_SOCKET)")
    parser.add_argument("--betas", default="0.5,1,2.5,5",
                        help="approximation factors β to compare, one key each")
    parser.add_argument("--seed", type=int, default=0, help="train/test split seed")
    parser.add_argument("--summary-json", help="also write the measured figures here")
    parser.add_argument("--check", action="store_true",
                        help="exit non-zero unless the story holds (for tests)")
    args = parser.parse_args()
    betas = [float(b) for b in args.betas.split(",")]
    started = time.perf_counter()

    client = vecseal.Client(args.socket)
    health = client.health()
    identity = client.whoami()["identity"]
    train_x, test_x, train_y, test_y = load_embeddings(args.seed)
    dimension = train_x.shape[1]
    print(f"vecseal demo: classifiers trained on encrypted embeddings\n"
          f"  data: scikit-learn digits, {len(train_x)} training + {len(test_x)} test images, "
          f"d={dimension}, L2-normalised\n"
          f"  daemon: vecseald {health.get('version', '?')} at {client.socket_path} "
          f"(hsm {health.get('hsm')}, audit {health.get('audit')})\n"
          f"  caller: {identity.get('user')} (uid {identity.get('uid')}), "
          f"exe {identity.get('exe')}")

    # Act 1, production: one key per β, and every embedding encrypted one-way.
    keys = {beta: ensure_key(client, f"digits-b{beta:g}", beta) for beta in betas}
    print(f"\n[production] created keys through the API: "
          + ", ".join(f"{k.name} (β {b:g})" for b, k in keys.items()))
    encrypted = {}
    encrypt_seconds = 0.0
    for beta, key in keys.items():
        t0 = time.perf_counter()
        encrypted[beta] = (client.encrypt(key.name, train_x), client.encrypt(key.name, test_x))
        encrypt_seconds += time.perf_counter() - t0
    vectors_encrypted = len(betas) * (len(train_x) + len(test_x))
    print(f"[production] encrypted {vectors_encrypted} vectors one-way (nonces discarded, "
          f"nobody can decrypt them) in {encrypt_seconds:.2f} s: "
          f"{vectors_encrypted / encrypt_seconds:,.0f} vectors/s through the Python client")

    # Act 2, the data scientist: same models on plaintext (the baseline) and on each ciphertext.
    plain_models = train(train_x, train_y)
    results = {"plaintext": accuracies(plain_models, test_x, test_y)}
    models = {}
    print(f"\n[data scientist] test accuracy ({len(test_x)} images), same models and settings:")
    print(header(plain_models))
    print(row("plaintext (the baseline)", results["plaintext"]))
    for beta, (enc_train, enc_test) in encrypted.items():
        models[beta] = train(enc_train, train_y)
        results[f"β={beta:g}"] = accuracies(models[beta], enc_test, test_y)
        print(row(f"encrypted, β={beta:g}", results[f"β={beta:g}"]))

    # Act 3: a model trained on ciphertexts needs inputs encrypted under its key.
    beta = betas[1] if len(betas) > 1 else betas[0]
    other = betas[0] if beta != betas[0] else betas[-1]
    key = keys[beta].name
    print(f"\n[inference] the β={beta:g} models ({key}) on new inputs (the test images again):")
    useless = accuracies(models[beta], test_x, test_y)
    print(row("plaintext inputs", useless))
    t0 = time.perf_counter()
    fresh = client.encrypt(key, test_x)
    fresh_seconds = time.perf_counter() - t0
    inference = accuracies(models[beta], fresh, test_y)
    print(row(f"encrypted now under {key}", inference))
    wrong_key = len(betas) > 1 and other != beta
    if wrong_key:
        mismatch = accuracies(models[beta], client.encrypt(keys[other].name, test_x), test_y)
        print(row(f"encrypted under {keys[other].name}", mismatch))
    print(f"  (chance: {CHANCE:.3f}; encrypting {len(test_x)} inputs took "
          f"{fresh_seconds * 1000:.0f} ms)")

    elapsed = time.perf_counter() - started
    print("\n" + "=" * 78)
    print(f"summary: accuracy as {' / '.join(plain_models)}; all figures measured in this run")
    lines = [("plaintext baseline", results["plaintext"])]
    lines += [(f"trained and tested encrypted, β={b:g}", results[f"β={b:g}"]) for b in betas]
    lines += [(f"β={beta:g} model, plaintext inputs", useless),
              (f"β={beta:g} model, inputs encrypted now", inference)]
    for label, scores in lines:
        print(f"  {label:<40}{pair(scores)}")
    print(f"  (chance: {CHANCE:.3f})")
    print(f"  {vectors_encrypted + len(test_x) * (2 if wrong_key else 1)} vectors encrypted, "
          f"{vectors_encrypted / encrypt_seconds:,.0f} vectors/s; the story took {elapsed:.1f} s")
    print("=" * 78)

    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump({"accuracy": results, "plaintext_inputs": useless,
                       "fresh_inputs": inference, "vectors_per_second":
                       vectors_encrypted / encrypt_seconds, "seconds": elapsed}, f, indent=2)

    if args.check:
        return check_story(results, useless, inference, betas, beta)
    return 0


def check_story(results, useless, inference, betas, beta):
    """The claims the demo makes, as assertions with generous margins: the story must hold on
    any split, not reproduce exact numbers."""
    failures = []
    baseline = max(results["plaintext"].values())
    smallest = max(results[f"β={min(betas):g}"].values())
    if smallest < baseline - 0.05:
        failures.append(f"β={min(betas):g} accuracy {smallest:.3f} is far below {baseline:.3f}")
    if max(useless.values()) > 0.5:
        failures.append(f"the model still works on plaintext ({max(useless.values()):.3f})")
    trained = max(results[f"β={beta:g}"].values())
    if abs(max(inference.values()) - trained) > 0.05:
        failures.append(f"fresh encryptions score {max(inference.values()):.3f}, "
                        f"the encrypted test set {trained:.3f}")
    for failure in failures:
        print(f"CHECK FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
