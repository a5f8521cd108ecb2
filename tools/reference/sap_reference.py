#!/usr/bin/python3
"""Independent reference implementation of the vecseal SAP format v1 (docs/format.md).

Written from the specification alone: the standard library's hmac/hashlib, a pure-Python
RFC 8439 ChaCha20 block function, and numpy only for the QR factorisation. Everything is computed
in double precision; ciphertexts are compared with the C++ implementation to within 1e-5.

Usage (run with /usr/bin/python3, which has numpy):
  sap_reference.py kat               print the known-answer vectors as JSON
  sap_reference.py markdown          print the known-answer section of docs/format.md
  sap_reference.py cpp               print them as C++ initialisers (tests/core/kat_vectors.inc)
  sap_reference.py check-docs FILE   exit 1 unless FILE holds exactly that section
  sap_reference.py check FILE        check a C++ case dump (JSON, see check_case) against this
"""
import hashlib
import hmac
import json
import math
import struct
import sys

import numpy as np

DOMAIN_TRANSFORM = b"vecseal/v1/transform"
DOMAIN_NOISE = b"vecseal/v1/noise"
DOMAIN_TOKEN_KEY = b"vecseal/v1/token-key"
DOMAIN_TOKEN = b"vecseal/v1/token"
TRANSFORM_IDS = {"permute": 1, "rotate": 2}
TOKEN_VERSION = 1
TOLERANCE = 1e-5


# --- RFC 8439 ChaCha20 -------------------------------------------------------------------------

def _rotl(v, c):
    return ((v << c) & 0xFFFFFFFF) | (v >> (32 - c))


def _quarter(s, a, b, c, d):
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = _rotl(s[b] ^ s[c], 7)


def chacha20_block(key, counter, nonce):
    """The 16 keystream words of one block (RFC 8439 §2.3)."""
    state = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    state += list(struct.unpack("<8I", key)) + [counter] + list(struct.unpack("<3I", nonce))
    s = list(state)
    for _ in range(10):
        _quarter(s, 0, 4, 8, 12); _quarter(s, 1, 5, 9, 13)
        _quarter(s, 2, 6, 10, 14); _quarter(s, 3, 7, 11, 15)
        _quarter(s, 0, 5, 10, 15); _quarter(s, 1, 6, 11, 12)
        _quarter(s, 2, 7, 8, 13); _quarter(s, 3, 4, 9, 14)
    return [(s[i] + state[i]) & 0xFFFFFFFF for i in range(16)]


def _self_test_chacha():
    # RFC 8439 §2.3.2 test vector.
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a00000000")
    words = chacha20_block(key, 1, nonce)
    assert words[0] == 0xE4E7F110 and words[15] == 0x4E3C50A2, "ChaCha20 self-test failed"


class WordStream:
    """u32le words of ChaCha20(key), block counter from 0, 12-byte nonce."""

    def __init__(self, key, nonce):
        self.key, self.nonce, self.counter, self.buffer = key, nonce, 0, []

    def next(self):
        if not self.buffer:
            self.buffer = chacha20_block(self.key, self.counter, self.nonce)
            self.counter += 1
        return self.buffer.pop(0)

    def take(self, count):
        return [self.next() for _ in range(count)]


def noise_nonce(index):
    return struct.pack("<I", index) + bytes(8)


# --- Sampling ----------------------------------------------------------------------------------

def uniform(w):
    return (w + 0.5) / 2.0**32


def normals(words, count):
    """Box–Muller in pairs from consecutive words; the first `count` values."""
    z = []
    for k in range(0, len(words) - 1, 2):
        rho = math.sqrt(-2.0 * math.log(uniform(words[k])))
        angle = 2.0 * math.pi * uniform(words[k + 1])
        z += [rho * math.cos(angle), rho * math.sin(angle)]
    return z[:count]


# --- Derivations -------------------------------------------------------------------------------

def hmac_sha256(key, message):
    return hmac.new(key, message, hashlib.sha256).digest()


def transform_seed(key, transform, d):
    return hmac_sha256(key, DOMAIN_TRANSFORM + b"\0" + bytes([TRANSFORM_IDS[transform]]) +
                       struct.pack("<I", d))


def noise_seed(key, nonce):
    return hmac_sha256(key, DOMAIN_NOISE + b"\0" + nonce)


def token_key(key):
    return hmac_sha256(key, DOMAIN_TOKEN_KEY + b"\0")


def permutation(seed, d):
    stream = WordStream(seed, bytes(12))
    pi = list(range(d))
    for i in range(d - 1, 0, -1):
        bound = i + 1
        limit = 2**32 - (2**32 % bound)
        w = stream.next()
        while w >= limit:
            w = stream.next()
        j = w % bound
        pi[i], pi[j] = pi[j], pi[i]
    return pi


def rotation(seed, d):
    count = d * d
    pairs = (count + 1) // 2
    z = normals(WordStream(seed, bytes(12)).take(2 * pairs), count)
    g = np.array(z, dtype=np.float64).reshape(d, d)
    q, r = np.linalg.qr(g)
    return q * np.sign(np.diag(r))  # column k times sign(R_kk)


def transform_of(key, transform, d):
    seed = transform_seed(key, transform, d)
    if transform == "permute":
        pi = permutation(seed, d)
        return seed, pi, lambda m: np.array([m[pi[i]] for i in range(d)])
    q = rotation(seed, d)
    return seed, q, lambda m: q @ np.asarray(m, dtype=np.float64)


def noise(seed_n, index, d, beta):
    pairs = (d + 1) // 2
    words = WordStream(seed_n, noise_nonce(index)).take(2 * pairs + 1)
    z = np.array(normals(words[:2 * pairs], d))
    x = uniform(words[2 * pairs])
    r = beta / 4 * x ** (1.0 / d)
    return z, x, r, r * z / np.linalg.norm(z)


def f32_bytes(values):
    return struct.pack("<%df" % len(values), *[float(v) for v in values])


def tag(tk, key_version, nonce, index, beta, transform, c_bytes):
    d = len(c_bytes) // 4
    message = (DOMAIN_TOKEN + b"\0" + bytes([TOKEN_VERSION]) + struct.pack("<I", key_version) +
               nonce + struct.pack("<I", index) + struct.pack("<d", beta) +
               bytes([TRANSFORM_IDS[transform]]) + struct.pack("<I", d) + c_bytes)
    return hmac_sha256(tk, message)[:16]


def token(tk, key_version, nonce, index, beta, transform, c_bytes):
    return (bytes([TOKEN_VERSION]) + struct.pack("<I", key_version) + nonce +
            struct.pack("<I", index) + tag(tk, key_version, nonce, index, beta, transform, c_bytes))


def encrypt(key, transform, beta, key_version, vectors, nonces, group_size, reversible):
    """Returns a dict with every intermediate value, for known answers."""
    d = len(vectors[0])
    seed_t, t_data, apply_t = transform_of(key, transform, d)
    tk = token_key(key)
    out = {"seed_t": seed_t.hex(), "token_key": tk.hex(), "groups": [], "vectors": []}
    if transform == "permute":
        out["permutation"] = t_data
    else:
        out["rotation"] = [[float(v) for v in row] for row in t_data]
    seeds = [noise_seed(key, n) for n in nonces]
    out["groups"] = [{"nonce": n.hex(), "seed_n": s.hex()} for n, s in zip(nonces, seeds)]
    for k, m in enumerate(vectors):
        g, j = divmod(k, group_size)
        z, x, r, delta = noise(seeds[g], j, d, beta)
        c = apply_t(np.array(m, dtype=np.float64)) + delta
        c32 = np.array(c, dtype=np.float32)
        entry = {"m": [float(v) for v in m], "group": g, "index": j,
                 "z": [float(v) for v in z], "x": x, "r": r,
                 "c": [float(v) for v in c], "c_f32_hex": f32_bytes(c32).hex()}
        if reversible:
            entry["token"] = token(tk, key_version, nonces[g], j, beta, transform,
                                   f32_bytes(c32)).hex()
        out["vectors"].append(entry)
    return out


def decrypt(key, transform, beta, key_version, c32_rows, tokens):
    d = len(c32_rows[0])
    _, t_data, _ = transform_of(key, transform, d)
    tk = token_key(key)
    result = []
    for c32, tok in zip(c32_rows, tokens):
        assert tok[0] == TOKEN_VERSION and struct.unpack("<I", tok[1:5])[0] == key_version
        nonce, index = tok[5:21], struct.unpack("<I", tok[21:25])[0]
        expected = tag(tk, key_version, nonce, index, beta, transform, f32_bytes(c32))
        if not hmac.compare_digest(expected, tok[25:41]):
            raise ValueError("token_authentication_failed")
        _, _, _, delta = noise(noise_seed(key, nonce), index, d, beta)
        y = np.array(c32, dtype=np.float64) - delta
        if transform == "permute":
            m = np.zeros(d)
            m[t_data] = y
        else:
            m = t_data.T @ y
        result.append(m)
    return result


# --- Known answers -----------------------------------------------------------------------------

KAT_KEY = bytes(range(32))


def kat_inputs(d, n):
    return [[((i + 3 * k) % 5 - 2) * 0.25 for i in range(d)] for k in range(n)]


KAT_CASES = [
    # name, transform, d, n, group size, reversible, beta, nonce first bytes
    ("permute-d4-oneway", "permute", 4, 2, 2, False, 1.0, [0xA0]),
    ("permute-d8-reversible", "permute", 8, 1, 1, True, 2.5, [0xB0]),
    ("rotate-d3-reversible", "rotate", 3, 2, 1, True, 1.0, [0xC0, 0xD0]),
    ("rotate-d4-oneway", "rotate", 4, 2, 2, False, 2.0, [0xE0]),
]


def kat():
    cases = []
    for name, transform, d, n, group, reversible, beta, starts in KAT_CASES:
        nonces = [bytes((s + i) & 0xFF for i in range(16)) for s in starts]
        result = encrypt(KAT_KEY, transform, beta, 1, kat_inputs(d, n), nonces, group, reversible)
        result.update({"name": name, "transform": transform, "dimension": d, "group_size": group,
                       "reversible": reversible, "beta": beta, "key_version": 1})
        cases.append(result)
    return {"key": KAT_KEY.hex(), "cases": cases}


def _fmt(values):
    return "[" + ", ".join("%.8f" % v for v in values) + "]"


def markdown():
    data = kat()
    lines = ["<!-- generated by tools/reference/sap_reference.py markdown; checked by ctest -->",
             "", "Key K = `%s` (bytes 0x00..0x1f), key version 1." % data["key"], "",
             "TK = `%s`" % data["cases"][0]["token_key"], ""]
    for case in data["cases"]:
        lines += ["### %s" % case["name"], "",
                  "transform %s, d = %d, β = %s, group size %d, %s." % (
                      case["transform"], case["dimension"], repr(case["beta"]),
                      case["group_size"], "reversible" if case["reversible"] else "one-way"), "",
                  "- S_T = `%s`" % case["seed_t"]]
        if "permutation" in case:
            lines.append("- π = %s" % case["permutation"])
        else:
            lines.append("- Q (rows):")
            for row in case["rotation"]:
                lines.append("  - %s" % _fmt(row))
        for g, group in enumerate(case["groups"]):
            lines.append("- group %d: nonce = `%s`, S_N = `%s`" % (g, group["nonce"], group["seed_n"]))
        for k, v in enumerate(case["vectors"]):
            lines += ["- vector %d (group %d, index j = %d)" % (k, v["group"], v["index"]),
                      "  - m = %s" % _fmt(v["m"]),
                      "  - z = %s" % _fmt(v["z"]),
                      "  - x' = %.10f, r = %.10f" % (v["x"], v["r"]),
                      "  - c = %s" % _fmt(v["c"]),
                      "  - c as float32le = `%s`" % v["c_f32_hex"]]
            if "token" in v:
                lines.append("  - token = `%s`" % v["token"])
        lines.append("")
    return "\n".join(lines)


def _cpp_list(values, fmt):
    return "{" + ", ".join(fmt % v for v in values) + "}"


def cpp():
    data = kat()
    out = ["// Generated by tools/reference/sap_reference.py cpp from the independent reference;",
           "// the same values are listed in docs/format.md. Do not edit by hand.",
           'constexpr const char* kKatKey = "%s";' % data["key"],
           'constexpr const char* kKatTokenKey = "%s";' % data["cases"][0]["token_key"],
           "const std::vector<KatCase> kKatCases = {"]
    for case in data["cases"]:
        out.append('  {"%s", TransformKind::k%s, %d, %d, %s, %r, "%s",' % (
            case["name"], case["transform"].capitalize(), case["dimension"], case["group_size"],
            "true" if case["reversible"] else "false", case["beta"], case["seed_t"]))
        out.append("   %s," % _cpp_list(case.get("permutation", []), "%d"))
        out.append("   {%s}," % ", ".join(_cpp_list(r, "%.17g") for r in case.get("rotation", [])))
        out.append("   %s," % _cpp_list([g["nonce"] for g in case["groups"]], '"%s"'))
        out.append("   %s," % _cpp_list([g["seed_n"] for g in case["groups"]], '"%s"'))
        out.append("   {")
        for v in case["vectors"]:
            out.append('    {%s, %s, %.17g, %s, "%s", "%s"},' % (
                _cpp_list(v["m"], "%.9ef"), _cpp_list(v["z"], "%.17g"), v["x"],
                _cpp_list(v["c"], "%.17g"), v["c_f32_hex"], v.get("token", "")))
        out.append("   }},")
    out.append("};")
    return "\n".join(out)


KAT_BEGIN = "<!-- KAT BEGIN -->"
KAT_END = "<!-- KAT END -->"


def check_docs(path):
    text = open(path, encoding="utf-8").read()
    start, end = text.find(KAT_BEGIN), text.find(KAT_END)
    if start < 0 or end < 0:
        print("%s has no %s ... %s block" % (path, KAT_BEGIN, KAT_END))
        return 1
    found = text[start + len(KAT_BEGIN):end].strip()
    if found != markdown().strip():
        print("the known answers in %s differ from the reference's; regenerate them with "
              "`sap_reference.py markdown`" % path)
        return 1
    print("known answers in %s match the reference" % path)
    return 0


def check_case(path):
    """A C++ dump: {key, transform, beta, key_version, dimension, group_size, nonces[hex],
    m[[..]], c_f32_hex[..], tokens[hex] (may be empty), decrypted[[..]] (if tokens)}."""
    case = json.load(open(path, encoding="utf-8"))
    key = bytes.fromhex(case["key"])
    d, beta, transform = case["dimension"], case["beta"], case["transform"]
    nonces = [bytes.fromhex(n) for n in case["nonces"]]
    ref = encrypt(key, transform, beta, case["key_version"], case["m"], nonces,
                  case["group_size"], False)
    worst = 0.0
    c32_rows = []
    for k, (mine, theirs_hex) in enumerate(zip(ref["vectors"], case["c_f32_hex"])):
        theirs = np.frombuffer(bytes.fromhex(theirs_hex), dtype="<f4").astype(np.float64)
        c32_rows.append(np.frombuffer(bytes.fromhex(theirs_hex), dtype="<f4"))
        worst = max(worst, float(np.max(np.abs(theirs - np.array(mine["c"])))))
    print("max |c_cpp - c_ref| = %.3g over %d vectors of d=%d (%s)" % (
        worst, len(c32_rows), d, transform))
    ok = worst <= TOLERANCE
    tokens = [bytes.fromhex(t) for t in case.get("tokens", [])]
    if tokens:
        # The tag covers the C++ ciphertext bytes, so it must match bit for bit.
        tk = token_key(key)
        for k, (c32, tok) in enumerate(zip(c32_rows, tokens)):
            g, j = divmod(k, case["group_size"])
            expected = token(tk, case["key_version"], nonces[g], j, beta, transform,
                             f32_bytes(c32))
            if expected != tok:
                print("token %d differs: %s != %s" % (k, tok.hex(), expected.hex()))
                ok = False
        plain = decrypt(key, transform, beta, case["key_version"], c32_rows, tokens)
        worst_m = max(float(np.max(np.abs(np.array(a) - np.array(b))))
                      for a, b in zip(plain, case["m"]))
        print("reference decrypt of the C++ ciphertexts: max |m' - m| = %.3g" % worst_m)
        ok = ok and worst_m <= 1e-4
    print("agree" if ok else "DISAGREE")
    return 0 if ok else 1


def main(argv):
    _self_test_chacha()
    if len(argv) >= 2 and argv[1] == "kat":
        json.dump(kat(), sys.stdout, indent=1)
        return 0
    if len(argv) >= 2 and argv[1] == "markdown":
        print(markdown())
        return 0
    if len(argv) >= 2 and argv[1] == "cpp":
        print(cpp())
        return 0
    if len(argv) == 3 and argv[1] == "check-docs":
        return check_docs(argv[2])
    if len(argv) == 3 and argv[1] == "check":
        return check_case(argv[2])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
