#!/usr/bin/python3
"""Independent reference implementation of the vecseal SAP formats v1 and v2 (docs/format.md).

Written from the specification alone: the standard library's hmac/hashlib, a pure-Python
RFC 8439 ChaCha20 block function, a pure-Python FIPS-197 AES-256 (v2's derivations; no OpenSSL,
no package), and numpy only for the QR factorisation and the rejection search. Both primitives
are self-tested against their standard's vector on every run. Everything is computed in double
precision; ciphertexts are compared with the C++ implementation to within 1e-5.

Usage (run with /usr/bin/python3, which has numpy):
  sap_reference.py kat               print the v1 known-answer vectors as JSON
  sap_reference.py markdown          print the v1 known-answer section of docs/format.md
  sap_reference.py cpp               print them as C++ initialisers (tests/core/kat_vectors.inc)
  sap_reference.py kat-v2            print the v2 known-answer vectors as JSON
  sap_reference.py markdown-v2       print the v2 known-answer section of docs/format.md
  sap_reference.py cpp-v2            print them as C++ initialisers (tests/core/kat_vectors_v2.inc)
  sap_reference.py search-rejection  search again for the rejection KAT's d (about 10 s)
  sap_reference.py check-docs FILE   exit 1 unless FILE holds exactly both known-answer sections
  sap_reference.py check FILE        check a C++ case dump (JSON; "format": 2 for v2, see
                                     check_case and check_case_v2) against this
"""
import decimal
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


def permutation(seed, d, rejections=None):
    """π of §4. If `rejections` is a list, each rejected draw is appended to it as
    (step i, index of the word in the stream, word, bound, limit)."""
    stream = WordStream(seed, bytes(12))
    pi = list(range(d))
    used = 0
    for i in range(d - 1, 0, -1):
        bound = i + 1
        limit = 2**32 - (2**32 % bound)  # Python integers: 2**32 when bound divides 2**32
        w, used = stream.next(), used + 1
        while w >= limit:
            if rejections is not None:
                rejections.append((i, used - 1, w, bound, limit))
            w, used = stream.next(), used + 1
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
    return (seed,) + transform_from_seed(seed, transform, d)


def transform_from_seed(seed, transform, d):
    """(π or Q, the function m -> T(m)) from the transform seed; the same in v1 and v2."""
    if transform == "permute":
        pi = permutation(seed, d)
        return pi, lambda m: np.array([m[pi[i]] for i in range(d)])
    q = rotation(seed, d)
    return q, lambda m: q @ np.asarray(m, dtype=np.float64)


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


def check_case(path):
    """A C++ dump: {key, transform, beta, key_version, dimension, group_size, nonces[hex],
    m[[..]], c_f32_hex[..], tokens[hex] (may be empty), decrypted[[..]] (if tokens)}."""
    case = json.load(open(path, encoding="utf-8"))
    if case.get("format", 1) == 2:
        return check_case_v2(case)
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


# === Format v2 (docs/format.md, part 2) ========================================================
#
# The keystream, the sampling, π, Q and the ciphertext formula are those of v1 above. What changes:
# every secret is two AES-256 blocks computed by the HSM, every vector has its own 12-byte nonce
# and noise seed, and the token carries a 24-byte tag.

V2_FORMAT = 2
V2_DOMAIN_TRANSFORM_SEED = 0x01
V2_DOMAIN_TOKEN_KEY = 0x02
V2_DOMAIN_PARAMS_KEY = 0x03
V2_DOMAIN_NOISE_SEED = 0x04
V2_DOMAIN_TOKEN = b"vecseal/v2/token"
V2_NONCE_SIZE = 12
V2_TAG_SIZE = 24
TOKEN_SIZE = 41


class Refused(Exception):
    """A refusal with its stable reason (the daemon's error code), as in the errors table."""

    def __init__(self, reason, message):
        super().__init__("%s: %s" % (reason, message))
        self.reason = reason


# --- FIPS-197 AES-256 --------------------------------------------------------------------------

def _xtime(a):
    a <<= 1
    return (a ^ 0x11B) if a & 0x100 else a


def _gf_mul(a, b):
    """Product in GF(2^8) modulo x^8 + x^4 + x^3 + x + 1 (FIPS-197 §4.2)."""
    p = 0
    while b:
        if b & 1:
            p ^= a
        a, b = _xtime(a), b >> 1
    return p


def _make_sbox():
    """FIPS-197 §5.1.1: multiplicative inverse (0 maps to 0), then the affine transformation."""
    exp, log = [0] * 255, [0] * 256  # powers of the generator 0x03
    value = 1
    for i in range(255):
        exp[i], log[value] = value, i
        value = _gf_mul(value, 3)
    sbox = []
    for x in range(256):
        inv = exp[(255 - log[x]) % 255] if x else 0
        b = inv
        for shift in range(1, 5):
            b ^= ((inv << shift) | (inv >> (8 - shift))) & 0xFF
        sbox.append(b ^ 0x63)
    return sbox


AES_SBOX = _make_sbox()


def aes256_key_schedule(key):
    """FIPS-197 §5.2 with Nk = 8, Nr = 14: the 15 round keys of 16 bytes."""
    assert len(key) == 32
    words = [list(key[4 * i:4 * i + 4]) for i in range(8)]
    rcon = 1
    for i in range(8, 60):
        temp = list(words[i - 1])
        if i % 8 == 0:
            temp = [AES_SBOX[b] for b in temp[1:] + temp[:1]]  # SubWord(RotWord(temp))
            temp[0] ^= rcon
            rcon = _xtime(rcon)
        elif i % 8 == 4:
            temp = [AES_SBOX[b] for b in temp]  # SubWord(temp)
        words.append([a ^ b for a, b in zip(words[i - 8], temp)])
    return [sum(words[4 * r:4 * r + 4], []) for r in range(15)]


def aes256_encrypt_block(round_keys, block):
    """FIPS-197 §5.1 Cipher. state[r + 4c] is row r of column c, i.e. the input byte order."""
    s = [a ^ b for a, b in zip(block, round_keys[0])]
    for rnd in range(1, 15):
        s = [AES_SBOX[b] for b in s]                                        # SubBytes
        s = [s[r + 4 * ((c + r) % 4)] for c in range(4) for r in range(4)]  # ShiftRows
        if rnd != 14:                                                       # MixColumns
            mixed = []
            for c in range(4):
                a0, a1, a2, a3 = s[4 * c:4 * c + 4]
                mixed += [_gf_mul(a0, 2) ^ _gf_mul(a1, 3) ^ a2 ^ a3,
                          a0 ^ _gf_mul(a1, 2) ^ _gf_mul(a2, 3) ^ a3,
                          a0 ^ a1 ^ _gf_mul(a2, 2) ^ _gf_mul(a3, 3),
                          _gf_mul(a0, 3) ^ a1 ^ a2 ^ _gf_mul(a3, 2)]
            s = mixed
        s = [a ^ b for a, b in zip(s, round_keys[rnd])]                    # AddRoundKey
    return bytes(s)


def aes256_ecb_encrypt(key, data):
    """What the HSM computes for CKM_AES_ECB: every 16-byte block on its own, no chaining."""
    assert len(data) % 16 == 0
    round_keys = aes256_key_schedule(key)
    return b"".join(aes256_encrypt_block(round_keys, data[i:i + 16])
                    for i in range(0, len(data), 16))


def _self_test_aes():
    # FIPS-197 §5.1.1 (two S-box entries) and Appendix C.3 (AES-256).
    assert AES_SBOX[0x00] == 0x63 and AES_SBOX[0x53] == 0xED, "AES S-box self-test failed"
    out = aes256_ecb_encrypt(bytes(range(32)), bytes.fromhex("00112233445566778899aabbccddeeff"))
    assert out == bytes.fromhex("8ea2b7ca516745bfeafc49904b496089"), "AES-256 self-test failed"


# --- v2 derivations ----------------------------------------------------------------------------

def v2_blocks(domain, input12):
    """The two blocks B(domain, half, input12): domain ‖ half ‖ 0x00 0x00 ‖ input12."""
    assert len(input12) == 12
    return [bytes([domain, half, 0x00, 0x00]) + input12 for half in (0, 1)]


def v2_derive(key, requests):
    """Every (domain, input12) of `requests` in one ECB operation, blocks in request order (as
    vecseal calls the HSM). Returns, per request, (its two blocks, its 32-byte secret)."""
    blocks = [b for domain, input12 in requests for b in v2_blocks(domain, input12)]
    out = aes256_ecb_encrypt(key, b"".join(blocks))
    return [(blocks[2 * i:2 * i + 2], out[32 * i:32 * i + 32]) for i in range(len(requests))]


def v2_transform_input(transform, d):
    return bytes([TRANSFORM_IDS[transform]]) + struct.pack("<I", d) + bytes(7)


def v2_transform_seed(key, transform, d):
    return v2_derive(key, [(V2_DOMAIN_TRANSFORM_SEED, v2_transform_input(transform, d))])[0]


def v2_token_key(key):
    return v2_derive(key, [(V2_DOMAIN_TOKEN_KEY, bytes(12))])[0]


def v2_params_key(key):
    return v2_derive(key, [(V2_DOMAIN_PARAMS_KEY, bytes(12))])[0]


def v2_noise_seeds(key, nonces):
    """S_N of every vector of a request, from one call."""
    assert all(len(n) == V2_NONCE_SIZE for n in nonces)
    return v2_derive(key, [(V2_DOMAIN_NOISE_SEED, n) for n in nonces])


def v2_noise(seed_n, d, beta):
    # v1's noise stream at index j = 0: its ChaCha nonce u32le(0) ‖ 8 zero bytes is 12 zero bytes.
    return noise(seed_n, 0, d, beta)


def v2_tag(tk, key_version, nonce, beta, transform, c_bytes):
    d = len(c_bytes) // 4
    message = (V2_DOMAIN_TOKEN + b"\0" + bytes([V2_FORMAT]) + struct.pack("<I", key_version) +
               nonce + struct.pack("<d", beta) + bytes([TRANSFORM_IDS[transform]]) +
               struct.pack("<I", d) + c_bytes)
    return hmac_sha256(tk, message)[:V2_TAG_SIZE]


def v2_token(tk, key_version, nonce, beta, transform, c_bytes):
    return (bytes([V2_FORMAT]) + struct.pack("<I", key_version) + nonce +
            v2_tag(tk, key_version, nonce, beta, transform, c_bytes))


def encrypt_v2(key, transform, beta, key_version, vectors, nonces, reversible):
    """Returns a dict with every intermediate value, for known answers."""
    d = len(vectors[0])
    assert len(nonces) == len(vectors), "v2: one nonce per vector"
    seed_t_blocks, seed_t = v2_transform_seed(key, transform, d)
    t_data, apply_t = transform_from_seed(seed_t, transform, d)
    tk_blocks, tk = v2_token_key(key)
    pk_blocks, pk = v2_params_key(key)
    out = {"seed_t_blocks": [b.hex() for b in seed_t_blocks], "seed_t": seed_t.hex(),
           "token_key_blocks": [b.hex() for b in tk_blocks], "token_key": tk.hex(),
           "params_key_blocks": [b.hex() for b in pk_blocks], "params_key": pk.hex(),
           "vectors": []}
    if transform == "permute":
        out["permutation"] = t_data
    else:
        out["rotation"] = [[float(v) for v in row] for row in t_data]
    for m, nonce, (blocks, seed_n) in zip(vectors, nonces, v2_noise_seeds(key, nonces)):
        z, x, r, delta = v2_noise(seed_n, d, beta)
        c = apply_t(np.array(m, dtype=np.float64)) + delta  # in double; rounded to float32 once
        c32 = np.array(c, dtype=np.float32)
        entry = {"nonce": nonce.hex(), "seed_n_blocks": [b.hex() for b in blocks],
                 "seed_n": seed_n.hex(), "m": [float(v) for v in m],
                 "z": [float(v) for v in z], "x": x, "r": r,
                 "c": [float(v) for v in c], "c_f32_hex": f32_bytes(c32).hex()}
        if reversible:
            entry["token"] = v2_token(tk, key_version, nonce, beta, transform,
                                      f32_bytes(c32)).hex()
        out["vectors"].append(entry)
    return out


def decrypt_v2(key, transform, beta, key_version, c32_rows, tokens):
    """The steps of docs/format.md §15, in their order; raises Refused."""
    d = len(c32_rows[0])
    if len(tokens) != len(c32_rows):
        raise Refused("invalid_length", "%d tokens for %d vectors" % (len(tokens), len(c32_rows)))
    for k, tok in enumerate(tokens):
        if len(tok) != TOKEN_SIZE:
            raise Refused("invalid_token", "token %d has %d bytes, not %d"
                          % (k, len(tok), TOKEN_SIZE))
        if tok[0] != V2_FORMAT:
            raise Refused("invalid_token", "token %d is format %d; the key version is format %d"
                          % (k, tok[0], V2_FORMAT))
        if struct.unpack("<I", tok[1:5])[0] != key_version:
            raise Refused("token_key_version_mismatch", "token %d" % k)
    tk = v2_token_key(key)[1]
    for k, (c32, tok) in enumerate(zip(c32_rows, tokens)):  # every tag before any seed
        expected = v2_tag(tk, key_version, tok[5:17], beta, transform, f32_bytes(c32))
        if not hmac.compare_digest(expected, tok[17:41]):
            raise Refused("token_authentication_failed", "token %d" % k)
    seeds = v2_noise_seeds(key, [tok[5:17] for tok in tokens])
    t_data, _ = transform_from_seed(v2_transform_seed(key, transform, d)[1], transform, d)
    result = []
    for c32, (_, seed_n) in zip(c32_rows, seeds):
        _, _, _, delta = v2_noise(seed_n, d, beta)
        y = np.array(c32, dtype=np.float64) - delta
        if transform == "permute":
            m = np.zeros(d)
            m[t_data] = y
        else:
            m = t_data.T @ y
        result.append(m)
    return result


# --- v2 known answers --------------------------------------------------------------------------

KAT_V2_CASES = [
    # name, transform, d, n, reversible, beta, first byte of vector 0's nonce
    ("v2-permute-d4-oneway", "permute", 4, 2, False, 1.0, 0x10),
    ("v2-permute-d8-reversible", "permute", 8, 1, True, 2.5, 0x30),
    ("v2-rotate-d3-reversible", "rotate", 3, 2, True, 1.0, 0x50),
    ("v2-rotate-d4-oneway", "rotate", 4, 2, False, 2.0, 0x70),
]


def kat_v2_nonce(start, k):
    """Vector k's nonce: the 12 bytes start + 16k, start + 16k + 1, ... (mod 256)."""
    return bytes((start + 16 * k + i) & 0xFF for i in range(V2_NONCE_SIZE))


# The smallest d at which deriving π under the KAT key (v2, transform permute) rejects a word, as
# found by `search-rejection` (which checks that it still finds this d).
REJECTION_KAT_D = 2639


def rejection_kat():
    d = REJECTION_KAT_D
    blocks, seed_t = v2_transform_seed(KAT_KEY, "permute", d)
    rejections = []
    pi = permutation(seed_t, d, rejections)
    assert rejections, "no rejected word at d = %d" % d
    i, index, word, bound, limit = rejections[0]
    words = WordStream(seed_t, bytes(12)).take(index + 2)
    accepted = words[index + 1]
    assert accepted < limit  # (true of this KAT: the next word is accepted)
    return {"dimension": d, "seed_t_blocks": [b.hex() for b in blocks], "seed_t": seed_t.hex(),
            "step_i": i, "bound": bound, "limit": limit, "word_index": index,
            "rejected_word": word, "accepted_word": accepted, "j": accepted % bound,
            "rejections": len(rejections),
            "permutation_sha256": hashlib.sha256(struct.pack("<%dI" % d, *pi)).hexdigest(),
            "permutation_head": pi[:8]}


def _chacha20_words_numpy(key, count):
    """The first `count` words of ChaCha20(key, nonce 0, counter from 0), all blocks at once.
    Used only by search_rejection; checked against chacha20_block there."""
    blocks = (count + 15) // 16
    init = np.zeros((16, blocks), dtype=np.uint32)
    init[0:4] = np.array([0x61707865, 0x3320646E, 0x79622D32, 0x6B206574], np.uint32)[:, None]
    init[4:12] = np.array(struct.unpack("<8I", key), np.uint32)[:, None]
    init[12] = np.arange(blocks, dtype=np.uint32)
    s = init.copy()

    def quarter(a, b, c, d):
        for x, y, z, rot in ((a, b, d, 16), (c, d, b, 12), (a, b, d, 8), (c, d, b, 7)):
            s[x] += s[y]
            v = s[z] ^ s[x]
            s[z] = (v << np.uint32(rot)) | (v >> np.uint32(32 - rot))

    for _ in range(10):
        quarter(0, 4, 8, 12); quarter(1, 5, 9, 13); quarter(2, 6, 10, 14); quarter(3, 7, 11, 15)
        quarter(0, 5, 10, 15); quarter(1, 6, 11, 12); quarter(2, 7, 8, 13); quarter(3, 4, 9, 14)
    return (s + init).T.reshape(-1)[:count]


def search_rejection(max_d=65536):
    """The smallest d ≤ max_d whose π derivation (v2 KAT key, permute) rejects a word."""
    for d in range(2, max_d + 1):
        seed_t = v2_transform_seed(KAT_KEY, "permute", d)[1]
        words = _chacha20_words_numpy(seed_t, d - 1).astype(np.int64)
        if d == 40:  # the fast keystream is the plain one (three blocks)
            assert list(words) == WordStream(seed_t, bytes(12)).take(d - 1)
        # Until the first rejection, step i = d-1-t reads word t with bound d - t.
        bounds = d - np.arange(d - 1, dtype=np.int64)
        limits = 2**32 - (2**32 % bounds)
        rejected = np.nonzero(words >= limits)[0]
        if rejected.size:
            return d, int(rejected[0])
    return None, None


SAMPLER_WORDS = [0, 2**32 - 1]
SAMPLER_PAIRS = [(0, 0), (0, 2**32 - 1), (2**32 - 1, 0), (2**32 - 1, 2**32 - 1)]


def _decimal_pi():
    """π to the context's precision (the recipe of the Python `decimal` documentation)."""
    decimal.getcontext().prec += 2
    three = decimal.Decimal(3)
    lasts, t, s, n, na, d, da = 0, three, 3, 1, 0, 0, 24
    while s != lasts:
        lasts = s
        n, na = n + na, na + 8
        d, da = d + da, da + 32
        t = (t * n) / d
        s += t
    decimal.getcontext().prec -= 2
    return +s


def _decimal_cos_sin(x):
    """cos x and sin x by their Taylor series, for |x| ≤ π."""
    cos, sin, term, k = decimal.Decimal(0), decimal.Decimal(0), decimal.Decimal(1), 0
    while True:
        if k % 4 == 0:
            cos += term
        elif k % 4 == 1:
            sin += term
        elif k % 4 == 2:
            cos -= term
        else:
            sin -= term
        k += 1
        term = term * x / k
        if abs(term) < decimal.Decimal(10) ** -(decimal.getcontext().prec + 5):
            return +cos, +sin


def box_muller_exact(a_word, b_word):
    """(z0, z1) of §3 in real arithmetic, to 60 significant digits. U(w) is exact in decimal;
    2πb is reduced to 2π(b − round(b)) in [−π, π] (exact: b has 33 bits) before the series."""
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        a = (decimal.Decimal(a_word) + decimal.Decimal("0.5")) / decimal.Decimal(2**32)
        b = (decimal.Decimal(b_word) + decimal.Decimal("0.5")) / decimal.Decimal(2**32)
        rho = (-2 * a.ln()).sqrt()
        cos, sin = _decimal_cos_sin(2 * _decimal_pi() * (b - b.to_integral_value()))
        return rho * cos, rho * sin


def _sig17(value):
    """A Decimal rounded (half to even) to 17 significant digits, written like C's %.16e."""
    mantissa, exponent = format(value, ".16e").split("e")
    return "%se%+03d" % (mantissa, int(exponent))


def sampler_kats():
    uniforms = []
    for w in SAMPLER_WORDS:
        u = uniform(w)
        with decimal.localcontext() as ctx:
            ctx.prec = 60  # enough for every (w + 0.5) / 2^32 to be exact
            exact = (decimal.Decimal(w) + decimal.Decimal("0.5")) / decimal.Decimal(2**32)
        assert decimal.Decimal(u) == exact  # U(w) is exact in binary64 for every w
        uniforms.append({"word": w, "u": u, "u_decimal": format(exact, "f"), "u_hex": u.hex(),
                         "u_bits": struct.unpack("<Q", struct.pack("<d", u))[0]})
    pairs = []
    for a, b in SAMPLER_PAIRS:
        z0, z1 = box_muller_exact(a, b)
        f0, f1 = normals([a, b], 2)
        assert abs(float(z0) - f0) < 1e-14 and abs(float(z1) - f1) < 1e-14
        pairs.append({"a": a, "b": b, "z0": _sig17(z0), "z1": _sig17(z1),
                      "z0_f64": f0, "z1_f64": f1})
    return {"uniform": uniforms, "box_muller": pairs}


def kat_v2():
    cases = []
    for name, transform, d, n, reversible, beta, start in KAT_V2_CASES:
        nonces = [kat_v2_nonce(start, k) for k in range(n)]
        result = encrypt_v2(KAT_KEY, transform, beta, 1, kat_inputs(d, n), nonces, reversible)
        result.update({"name": name, "transform": transform, "dimension": d,
                       "reversible": reversible, "beta": beta, "key_version": 1})
        cases.append(result)
    first = cases[0]
    return {"key": KAT_KEY.hex(), "key_version": 1,
            "token_key_blocks": first["token_key_blocks"], "token_key": first["token_key"],
            "params_key_blocks": first["params_key_blocks"], "params_key": first["params_key"],
            "cases": cases, "rejection": rejection_kat(), "sampler": sampler_kats()}


def _blocks(hexes):
    return ", ".join("`%s`" % h for h in hexes)


def markdown_v2():
    data = kat_v2()
    lines = ["<!-- generated by tools/reference/sap_reference.py markdown-v2; checked by ctest -->",
             "", "Key K = `%s` (AES-256 key bytes 0x00..0x1f), key version 1." % data["key"], "",
             "- TK blocks = %s" % _blocks(data["token_key_blocks"]),
             "- TK = `%s`" % data["token_key"],
             "- PK blocks = %s" % _blocks(data["params_key_blocks"]),
             "- PK = `%s`" % data["params_key"], ""]
    for case in data["cases"]:
        lines += ["### %s" % case["name"], "",
                  "transform %s, d = %d, β = %s, %s." % (
                      case["transform"], case["dimension"], repr(case["beta"]),
                      "reversible" if case["reversible"] else "one-way"), "",
                  "- S_T blocks = %s" % _blocks(case["seed_t_blocks"]),
                  "- S_T = `%s`" % case["seed_t"]]
        if "permutation" in case:
            lines.append("- π = %s" % case["permutation"])
        else:
            lines.append("- Q (rows):")
            for row in case["rotation"]:
                lines.append("  - %s" % _fmt(row))
        for k, v in enumerate(case["vectors"]):
            lines += ["- vector %d" % k,
                      "  - nonce = `%s`" % v["nonce"],
                      "  - S_N blocks = %s" % _blocks(v["seed_n_blocks"]),
                      "  - S_N = `%s`" % v["seed_n"],
                      "  - m = %s" % _fmt(v["m"]),
                      "  - z = %s" % _fmt(v["z"]),
                      "  - x' = %.10f, r = %.10f" % (v["x"], v["r"]),
                      "  - c = %s" % _fmt(v["c"]),
                      "  - c as float32le = `%s`" % v["c_f32_hex"]]
            if "token" in v:
                lines.append("  - token = `%s`" % v["token"])
        lines.append("")
    rej = data["rejection"]
    lines += ["### v2-permute-rejection", "",
              "transform permute, d = %d: the smallest d ≤ 65536 at which deriving π under this "
              "key rejects a word." % rej["dimension"], "",
              "- S_T blocks = %s" % _blocks(rej["seed_t_blocks"]),
              "- S_T = `%s`" % rej["seed_t"],
              "- step i = %d: bound = %d, limit = %d; word w_%d = %d (0x%08x) ≥ limit is rejected; "
              "the next word w_%d = %d (0x%08x) is accepted, j = %d" % (
                  rej["step_i"], rej["bound"], rej["limit"], rej["word_index"],
                  rej["rejected_word"], rej["rejected_word"], rej["word_index"] + 1,
                  rej["accepted_word"], rej["accepted_word"], rej["j"]),
              "- words rejected in the whole derivation: %d" % rej["rejections"],
              "- π[0..7] = %s" % rej["permutation_head"],
              "- SHA-256(π as u32le) = `%s`" % rej["permutation_sha256"], ""]
    lines += ["### Sampler edge words", "",
              "| w | U(w) = (2w + 1) / 2^33, exact | binary64 | binary64 bits |",
              "|---|---|---|---|"]
    for u in data["sampler"]["uniform"]:
        lines.append("| %d | %s | `%s` | `%016x` |" % (
            u["word"], u["u_decimal"], u["u_hex"], u["u_bits"]))
    lines += ["", "Box–Muller pairs, in real arithmetic to 17 significant digits, then as evaluated "
              "in binary64 by the reference (`log`, `cos`, `sin` of the C library):", "",
              "| a word | b word | z0 | z1 | z0, binary64 | z1, binary64 |",
              "|---|---|---|---|---|---|"]
    for p in data["sampler"]["box_muller"]:
        lines.append("| %d | %d | %s | %s | %.17g | %.17g |" % (
            p["a"], p["b"], p["z0"], p["z1"], p["z0_f64"], p["z1_f64"]))
    lines.append("")
    return "\n".join(lines)


CPP_V2_HEADER = """\
// Generated by tools/reference/sap_reference.py cpp-v2 from the independent reference;
// the same values are listed in docs/format.md (format v2). Do not edit by hand.
//
// The including file defines, before #include (needs <array>, <cstdint>, <vector>):
//
//   struct KatV2Vector {
//     const char* nonce;                        // 12 bytes, hex
//     std::array<const char*, 2> seed_n_blocks; // the two AES input blocks of S_N, hex
//     const char* seed_n;                       // S_N, 32 bytes, hex
//     std::vector<float> m;
//     std::vector<double> z;                    // the d normals
//     double x;                                 // x'
//     double r;
//     std::vector<double> c;                    // in double, before rounding to float32
//     const char* c_f32_hex;                    // c rounded to float32, little-endian, hex
//     const char* token;                        // 41 bytes, hex; "" in one-way mode
//   };
//   struct KatV2Case {
//     const char* name;
//     TransformKind transform;
//     size_t dimension;
//     bool reversible;
//     double beta;
//     std::array<const char*, 2> seed_t_blocks; // the two AES input blocks of S_T, hex
//     const char* seed_t;                       // S_T, 32 bytes, hex
//     std::vector<uint32_t> permutation;        // π (permute only)
//     std::vector<std::vector<double>> rotation;// rows of Q (rotate only)
//     std::vector<KatV2Vector> vectors;
//   };
//   struct KatV2Rejection {                     // transform permute, key kKatV2Key
//     size_t dimension;                         // the smallest d with a rejected word
//     std::array<const char*, 2> seed_t_blocks;
//     const char* seed_t;
//     uint32_t step_i;                          // the step whose first draw is rejected
//     uint32_t bound;                           // step_i + 1
//     uint64_t limit;                           // 2^32 - (2^32 mod bound)
//     uint32_t word_index;                      // index of the rejected word in the stream
//     uint32_t rejected_word;
//     uint32_t accepted_word;                   // the word after it, accepted
//     uint32_t j;                               // accepted_word mod bound
//     uint32_t rejections;                      // words rejected in the whole derivation
//     const char* permutation_sha256;           // SHA-256 of π as u32le, hex
//     std::vector<uint32_t> permutation_head;   // π[0..7]
//   };
//   struct KatV2Uniform { uint32_t word; double u; uint64_t u_bits; };  // U(w) is exact
//   struct KatV2BoxMuller {
//     uint32_t a_word, b_word;
//     double z0, z1;          // real-arithmetic value, 17 significant digits
//     double z0_f64, z1_f64;  // as the reference evaluates it in binary64
//   };
"""


def cpp_v2():
    data = kat_v2()
    out = [CPP_V2_HEADER.rstrip("\n"),
           'constexpr const char* kKatV2Key = "%s";' % data["key"],
           "constexpr uint32_t kKatV2KeyVersion = %d;" % data["key_version"],
           "constexpr std::array<const char*, 2> kKatV2TokenKeyBlocks = %s;" %
           _cpp_list(data["token_key_blocks"], '"%s"'),
           'constexpr const char* kKatV2TokenKey = "%s";' % data["token_key"],
           "constexpr std::array<const char*, 2> kKatV2ParamsKeyBlocks = %s;" %
           _cpp_list(data["params_key_blocks"], '"%s"'),
           'constexpr const char* kKatV2ParamsKey = "%s";' % data["params_key"],
           "const std::vector<KatV2Case> kKatV2Cases = {"]
    for case in data["cases"]:
        out.append('  {"%s", TransformKind::k%s, %d, %s, %r,' % (
            case["name"], case["transform"].capitalize(), case["dimension"],
            "true" if case["reversible"] else "false", case["beta"]))
        out.append('   %s, "%s",' % (_cpp_list(case["seed_t_blocks"], '"%s"'), case["seed_t"]))
        out.append("   %s," % _cpp_list(case.get("permutation", []), "%d"))
        out.append("   {%s}," % ", ".join(_cpp_list(r, "%.17g") for r in case.get("rotation", [])))
        out.append("   {")
        for v in case["vectors"]:
            out.append('    {"%s", %s, "%s",' % (
                v["nonce"], _cpp_list(v["seed_n_blocks"], '"%s"'), v["seed_n"]))
            out.append('     %s, %s, %.17g, %.17g,' % (
                _cpp_list(v["m"], "%.9ef"), _cpp_list(v["z"], "%.17g"), v["x"], v["r"]))
            out.append('     %s, "%s", "%s"},' % (
                _cpp_list(v["c"], "%.17g"), v["c_f32_hex"], v.get("token", "")))
        out.append("   }},")
    out.append("};")
    rej = data["rejection"]
    out.append('const KatV2Rejection kKatV2Rejection = {%d, %s, "%s",' % (
        rej["dimension"], _cpp_list(rej["seed_t_blocks"], '"%s"'), rej["seed_t"]))
    out.append('  %d, %d, %dULL, %d, %du, %du, %d, %d,'
               % (rej["step_i"], rej["bound"], rej["limit"],
                  rej["word_index"], rej["rejected_word"], rej["accepted_word"], rej["j"],
                  rej["rejections"]))
    out.append('  "%s", %s};' % (rej["permutation_sha256"],
                                  _cpp_list(rej["permutation_head"], "%d")))
    out.append("const std::vector<KatV2Uniform> kKatV2Uniform = {")
    for u in data["sampler"]["uniform"]:
        out.append("  {%du, %s, 0x%016xULL}," % (u["word"], u["u_hex"], u["u_bits"]))
    out.append("};")
    out.append("const std::vector<KatV2BoxMuller> kKatV2BoxMuller = {")
    for p in data["sampler"]["box_muller"]:
        out.append("  {%du, %du, %s, %s, %.17g, %.17g}," % (
            p["a"], p["b"], p["z0"], p["z1"], p["z0_f64"], p["z1_f64"]))
    out.append("};")
    return "\n".join(out)


KAT_V2_BEGIN = "<!-- KAT V2 BEGIN -->"
KAT_V2_END = "<!-- KAT V2 END -->"


def _check_block(path, text, begin, end, expected, command):
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < 0 or stop < start:
        print("%s has no %s ... %s block" % (path, begin, end))
        return False
    if text[start + len(begin):stop].strip() != expected.strip():
        print("the known answers between %s and %s in %s differ from the reference's; "
              "regenerate them with `sap_reference.py %s`" % (begin, end, path, command))
        return False
    return True


def check_docs(path):
    text = open(path, encoding="utf-8").read()
    ok_v1 = _check_block(path, text, KAT_BEGIN, KAT_END, markdown(), "markdown")
    ok_v2 = _check_block(path, text, KAT_V2_BEGIN, KAT_V2_END, markdown_v2(), "markdown-v2")
    if not (ok_v1 and ok_v2):
        return 1
    print("known answers in %s (formats 1 and 2) match the reference" % path)
    return 0


def check_case_v2(case):
    """A C++ dump with "format": 2: {key, transform, beta, key_version, dimension,
    nonces[hex, 12 bytes, one per vector], m[[..]], c_f32_hex[..], tokens[hex] (may be empty),
    decrypted[[..]] (optional: the C++ decryption of its own ciphertexts)}."""
    key = bytes.fromhex(case["key"])
    d, beta, transform = case["dimension"], case["beta"], case["transform"]
    key_version = case["key_version"]
    nonces = [bytes.fromhex(n) for n in case["nonces"]]
    ok = True
    if len(nonces) != len(case["m"]) or any(len(n) != V2_NONCE_SIZE for n in nonces):
        print("format 2 needs one 12-byte nonce per vector: %d nonces for %d vectors"
              % (len(nonces), len(case["m"])))
        return 1
    if len(set(nonces)) != len(nonces):
        print("two vectors share a nonce")
        ok = False
    ref = encrypt_v2(key, transform, beta, key_version, case["m"], nonces, False)
    worst = 0.0
    c32_rows = []
    for mine, theirs_hex in zip(ref["vectors"], case["c_f32_hex"]):
        c32 = np.frombuffer(bytes.fromhex(theirs_hex), dtype="<f4")
        c32_rows.append(c32)
        worst = max(worst, float(np.max(np.abs(c32.astype(np.float64) - np.array(mine["c"])))))
    print("format 2: max |c_cpp - c_ref| = %.3g over %d vectors of d=%d (%s)" % (
        worst, len(c32_rows), d, transform))
    ok = ok and worst <= TOLERANCE and len(c32_rows) == len(case["m"])
    tokens = [bytes.fromhex(t) for t in case.get("tokens", [])]
    if tokens:
        # The tag covers the C++ ciphertext bytes, so it must match bit for bit.
        tk = v2_token_key(key)[1]
        for k, (c32, tok) in enumerate(zip(c32_rows, tokens)):
            expected = v2_token(tk, key_version, nonces[k], beta, transform, f32_bytes(c32))
            if expected != tok:
                print("token %d differs: %s != %s" % (k, tok.hex(), expected.hex()))
                ok = False
        try:
            plain = decrypt_v2(key, transform, beta, key_version, c32_rows, tokens)
        except Refused as refusal:
            print("reference decrypt of the C++ ciphertexts refused: %s" % refusal)
            return 1
        worst_m = max(float(np.max(np.abs(np.array(a) - np.array(b))))
                      for a, b in zip(plain, case["m"]))
        print("reference decrypt of the C++ ciphertexts: max |m' - m| = %.3g" % worst_m)
        ok = ok and worst_m <= 1e-4
        if "decrypted" in case:
            worst_cpp = max(float(np.max(np.abs(np.array(a) - np.array(b))))
                            for a, b in zip(case["decrypted"], plain))
            print("C++ decrypt vs reference decrypt: max difference = %.3g" % worst_cpp)
            ok = ok and worst_cpp <= 1e-4 and len(case["decrypted"]) == len(plain)
    print("agree" if ok else "DISAGREE")
    return 0 if ok else 1


def main(argv):
    _self_test_chacha()
    _self_test_aes()
    if len(argv) >= 2 and argv[1] == "kat":
        json.dump(kat(), sys.stdout, indent=1)
        return 0
    if len(argv) >= 2 and argv[1] == "markdown":
        print(markdown())
        return 0
    if len(argv) >= 2 and argv[1] == "cpp":
        print(cpp())
        return 0
    if len(argv) >= 2 and argv[1] == "kat-v2":
        json.dump(kat_v2(), sys.stdout, indent=1)
        return 0
    if len(argv) >= 2 and argv[1] == "markdown-v2":
        print(markdown_v2())
        return 0
    if len(argv) >= 2 and argv[1] == "cpp-v2":
        print(cpp_v2())
        return 0
    if len(argv) >= 2 and argv[1] == "search-rejection":
        d, index = search_rejection()
        print("smallest d with a rejected word (v2 KAT key, permute): %s (word %s)" % (d, index))
        if d != REJECTION_KAT_D:
            print("REJECTION_KAT_D is %s; update it and regenerate the known answers"
                  % REJECTION_KAT_D)
            return 1
        return 0
    if len(argv) == 3 and argv[1] == "check-docs":
        return check_docs(argv[2])
    if len(argv) == 3 and argv[1] == "check":
        return check_case(argv[2])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
