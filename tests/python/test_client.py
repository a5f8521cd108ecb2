"""Tests of the vecseal Python client.

DaemonTest talks to the real dev daemon named by $VECSEAL_SOCKET (with_daemon.py starts one).
FaultTest uses a scripted fake daemon on a Unix socket, for the faults a healthy daemon never
produces (dropped keep-alive connections, garbage replies, a rotation between two requests).
With VECSEAL_TEST_NO_NUMPY=1 numpy is hidden, so the same tests cover the JSON-only client.
"""

import base64
import json
import math
import os
import random
import re
import signal
import socket
import sys
import tempfile
import threading
import unittest

if os.environ.get("VECSEAL_TEST_NO_NUMPY") == "1":
    sys.modules["numpy"] = None  # makes `import numpy` raise ImportError
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "clients", "python"))

import vecseal  # noqa: E402
from vecseal import client as client_module  # noqa: E402

HAVE_NUMPY = client_module.np is not None
if HAVE_NUMPY:
    import numpy as np


def rows(vectors):
    """Any batch the client returns, as lists of floats."""
    return [list(map(float, v)) for v in vectors]


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def distance(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def unit_vectors(n, d, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        v = [rng.gauss(0, 1) for _ in range(d)]
        length = norm(v)
        out.append([x / length for x in v])
    return out


def batch(vectors):
    """The caller's natural input type: an array with numpy, else lists."""
    return np.asarray(vectors, dtype=np.float32) if HAVE_NUMPY else vectors


def float32(x):
    return float(np.float32(x)) if HAVE_NUMPY else x


@unittest.skipUnless(os.environ.get("VECSEAL_SOCKET"), "needs a daemon: run via with_daemon.py")
class DaemonTest(unittest.TestCase):
    BETA = 0.2  # the dev daemon's key `demo` (docs/configuration.md, "Dev mode")

    def setUp(self):
        self.client = vecseal.Client()
        self.addCleanup(self.client.close)

    def unique_key(self, prefix):
        return f"{prefix}-{os.getpid()}-{random.randrange(1 << 30)}"

    def test_health_reports_every_part_ok(self):
        health = self.client.health()
        self.assertEqual(health["status"], "ok")
        self.assertEqual(health["hsm"], "ok")
        self.assertEqual(health["audit"], "ok")

    def test_keys_lists_the_dev_key_with_its_parameters(self):
        keys = {k.name: k for k in self.client.keys()}
        self.assertIn("demo", keys)
        self.assertEqual(keys["demo"].approximation_factor, self.BETA)
        self.assertEqual(keys["demo"].transform, "rotate")
        self.assertIn(keys["demo"].version, keys["demo"].versions)

    def test_whoami_names_this_process(self):
        identity = self.client.whoami()["identity"]
        self.assertEqual(identity["pid"], os.getpid())
        self.assertEqual(identity["uid"], os.getuid())

    def test_encrypt_keeps_shape_and_bounds_the_noise(self):
        plain = unit_vectors(20, 64, seed=1)
        encrypted = self.client.encrypt("demo", batch(plain))
        if HAVE_NUMPY:
            self.assertEqual(encrypted.dtype, np.float32)
            self.assertEqual(encrypted.shape, (20, 64))
        self.assertEqual(len(encrypted), 20)
        for m, c in zip(plain, rows(encrypted)):
            self.assertEqual(len(c), 64)
            # The transform keeps norms; the noise has norm at most β/4 (a hard bound), and > 0.
            self.assertLessEqual(abs(norm(c) - norm(m)), self.BETA / 4 + 1e-4)
            self.assertGreater(distance(m, c), 0.0)
        self.assertIsNotNone(self.client.last_key_version)

    def test_encrypt_preserves_clearly_ordered_distances(self):
        # β-DCP: d(x,y) < d(x,z) − β implies d(cx,cy) < d(cx,cz), for every encryption.
        d = 32
        x = [0.0] * d
        y = [0.0] * d
        y[0] = 0.1
        z = [0.0] * d
        z[1] = 10.0
        for _ in range(5):
            cx, cy, cz = rows(self.client.encrypt("demo", batch([x, y, z])))
            self.assertLess(distance(cx, cy), distance(cx, cz))

    def test_same_vector_twice_gives_fresh_noise_within_the_bound(self):
        v = unit_vectors(1, 48, seed=2)[0]
        first = rows([self.client.encrypt("demo", batch(v))])[0]
        second = rows([self.client.encrypt("demo", batch(v))])[0]
        self.assertEqual(len(first), 48)  # one vector in, one vector out (not a batch of one)
        self.assertNotEqual(first, second)
        self.assertLessEqual(distance(first, second), self.BETA / 2 + 1e-4)

    def test_reversible_round_trip(self):
        plain = unit_vectors(10, 40, seed=3)
        encrypted, tokens = self.client.encrypt("demo", batch(plain), reversible=True)
        self.assertEqual(len(tokens), 10)
        version = self.client.last_key_version
        for token in tokens:
            self.assertEqual(len(token), vecseal.TOKEN_SIZE)
            self.assertEqual(token[0], 2)  # token format version: the demo key is format 2
            self.assertEqual(int.from_bytes(token[1:5], "little"), version)
        decrypted = rows(self.client.decrypt("demo", encrypted, tokens))
        for m, p in zip(plain, decrypted):
            for a, b in zip(m, p):
                self.assertAlmostEqual(a, b, delta=1e-4)

    def test_base64_tokens_are_accepted(self):
        plain = unit_vectors(3, 16, seed=4)
        encrypted, tokens = self.client.encrypt("demo", batch(plain), reversible=True)
        text_tokens = [base64.b64encode(t).decode() for t in tokens]
        decrypted = rows(self.client.decrypt("demo", encrypted, text_tokens))
        self.assertAlmostEqual(decrypted[2][5], plain[2][5], delta=1e-4)

    def test_a_tampered_vector_fails_authentication(self):
        plain = unit_vectors(4, 16, seed=5)
        encrypted, tokens = self.client.encrypt("demo", batch(plain), reversible=True)
        tampered = rows(encrypted)
        tampered[2][0] += 0.5
        with self.assertRaises(vecseal.InvalidInput) as caught:
            self.client.decrypt("demo", batch(tampered), tokens)
        self.assertEqual(caught.exception.status, 400)

    def test_large_batches_are_split_and_reassembled_in_order(self):
        plain = unit_vectors(50, 24, seed=6)
        small = vecseal.Client(batch_size=7)
        self.addCleanup(small.close)
        before = self.encrypt_requests("demo")
        encrypted, tokens = small.encrypt("demo", batch(plain), reversible=True)
        self.assertEqual(self.encrypt_requests("demo") - before, math.ceil(50 / 7))
        # Decrypting with the one-request client proves every row kept its token and place.
        decrypted = rows(self.client.decrypt("demo", encrypted, tokens))
        for m, p in zip(plain, decrypted):
            self.assertAlmostEqual(m[0], p[0], delta=1e-4)
            self.assertAlmostEqual(m[23], p[23], delta=1e-4)

    def test_a_batch_the_daemon_finds_too_large_is_split_further(self):
        # The daemon's default limit is 10000 vectors per request.
        n = 10001
        plain = [[1.0, 0.0]] * n
        greedy = vecseal.Client(batch_size=1 << 20, max_request_bytes=1 << 30)
        self.addCleanup(greedy.close)
        encrypted = greedy.encrypt("demo", batch(plain))
        self.assertEqual(len(encrypted), n)
        self.assertLess(greedy.batch_size, n)

    def test_json_and_binary_clients_agree_to_the_bit(self):
        # The daemon writes floats that parse back to the same float32, and the token's tag
        # covers those exact bytes, so either protocol may decrypt what the other encrypted.
        if not HAVE_NUMPY:
            self.skipTest("the binary protocol needs numpy")
        plain = unit_vectors(6, 32, seed=7)
        json_client = vecseal.Client(binary=False)
        self.addCleanup(json_client.close)
        for encryptor, decryptor in ((json_client, self.client), (self.client, json_client)):
            encrypted, tokens = encryptor.encrypt("demo", batch(plain), reversible=True)
            decrypted = decryptor.decrypt("demo", encrypted, tokens)
            self.assertLess(float(np.abs(decrypted - batch(plain)).max()), 1e-4)

    def test_decrypt_mixes_key_versions_across_a_rotation(self):
        key = self.unique_key("rot")
        created = self.client.create_key(key, approximation_factor=1.0)
        self.assertEqual((created.name, created.version, created.transform), (key, 1, "rotate"))
        plain = unit_vectors(6, 16, seed=8)
        first, first_tokens = self.client.encrypt(key, batch(plain[:3]), reversible=True)
        rotated = self.client.rotate_key(key)
        self.assertEqual(rotated.version, 2)
        second, second_tokens = self.client.encrypt(key, batch(plain[3:]), reversible=True)
        self.assertEqual(self.client.last_key_version, 2)
        mixed_vectors = rows(first) + rows(second)
        # Interleave versions, so that grouping by version must also restore the order.
        order = [0, 3, 1, 4, 2, 5]
        tokens = list(first_tokens) + list(second_tokens)
        decrypted = rows(self.client.decrypt(key, batch([mixed_vectors[i] for i in order]),
                                             [tokens[i] for i in order]))
        for position, i in enumerate(order):
            self.assertAlmostEqual(decrypted[position][0], plain[i][0], delta=1e-4)

    def test_key_version_encrypts_under_an_older_version_on_both_wires(self):
        key = self.unique_key("pin")
        self.client.create_key(key, approximation_factor=1.0, transform="permute")
        self.client.rotate_key(key)
        plain = unit_vectors(3, 8, seed=11)
        json_client = vecseal.Client(binary=False)
        self.addCleanup(json_client.close)
        for client in (self.client, json_client):
            client.encrypt(key, batch(plain))
            self.assertEqual(client.last_key_version, 2)
            sealed, tokens = client.encrypt(key, batch(plain), reversible=True, key_version=1)
            self.assertEqual(client.last_key_version, 1)
            self.assertEqual(tokens[0][1], 1)  # the token names version 1 (uint32 LE at byte 1)
            opened = rows(client.decrypt(key, sealed, tokens))
            self.assertAlmostEqual(opened[2][5], plain[2][5], delta=1e-4)
            with self.assertRaises(vecseal.KeyNotFound):
                client.encrypt(key, batch(plain), key_version=9)
            with self.assertRaises(vecseal.InvalidInput):
                client.encrypt(key, batch(plain), key_version=0)

    def test_lifecycle_rewrap_retire_and_delete(self):
        key = self.unique_key("life")
        self.client.create_key(key, approximation_factor=2.0, dimension=4)
        plain = unit_vectors(3, 4, seed=5)
        sealed, tokens = self.client.encrypt(key, batch(plain), reversible=True)
        self.client.rotate_key(key)
        shown = self.client.get_key(key)
        self.assertEqual(shown.versions, (1, 2))
        self.assertEqual(shown.states, ("active", "active"))
        self.assertEqual(shown.min_encryption_version, 1)

        moved, new_tokens = self.client.rewrap(key, sealed, tokens)
        self.assertEqual([t[1] for t in new_tokens], [2, 2, 2])  # version 2, byte 1 of a token
        self.assertGreater(max(abs(a - b) for r, p in zip(rows(moved), plain)
                               for a, b in zip(r, p)), 1e-2)
        opened = rows(self.client.decrypt(key, moved, new_tokens))
        self.assertAlmostEqual(opened[1][2], plain[1][2], delta=1e-4)

        retired = self.client.configure_key(key, min_encryption_version=2,
                                            min_decryption_version=2)
        self.assertEqual(retired.states, ("retired", "active"))
        with self.assertRaises(vecseal.InvalidInput) as caught:
            self.client.decrypt(key, sealed, tokens)
        self.assertEqual((caught.exception.status, caught.exception.code),
                         (400, "key_version_retired"))
        with self.assertRaises(vecseal.InvalidInput) as caught:
            self.client.configure_key(key, min_decryption_version=3)
        self.assertEqual(caught.exception.code, "invalid_key_config")

        self.assertEqual(self.client.delete_key(key), [1, 2])
        with self.assertRaises(vecseal.KeyNotFound):
            self.client.get_key(key)

    def test_create_key_with_a_taken_name_raises_key_exists(self):
        with self.assertRaises(vecseal.KeyExists) as caught:
            self.client.create_key("demo", approximation_factor=1.0)
        self.assertEqual((caught.exception.status, caught.exception.code), (409, "key_exists"))

    def test_unknown_key_raises_key_not_found(self):
        with self.assertRaises(vecseal.KeyNotFound) as caught:
            self.client.encrypt("no-such-key", batch([[1.0, 2.0]]))
        self.assertEqual((caught.exception.status, caught.exception.code),
                         (404, "key_not_found"))

    def test_non_finite_value_names_its_index_in_the_whole_batch(self):
        plain = unit_vectors(12, 8, seed=9)
        plain[9][3] = float("nan")
        for binary in ((False, True) if HAVE_NUMPY else (False,)):
            small = vecseal.Client(batch_size=4, binary=binary)
            self.addCleanup(small.close)
            with self.assertRaises(vecseal.InvalidInput) as caught:
                small.encrypt("demo", batch(plain))
            self.assertEqual(caught.exception.code, "non_finite_value")
            self.assertEqual(caught.exception.vector_index, 9, f"binary={binary}")

    def test_daemon_rejects_a_dimension_the_key_does_not_allow(self):
        key = self.unique_key("fixed")
        self.client.create_key(key, approximation_factor=1.0, transform="permute", dimension=8)
        self.assertEqual(self.client.encrypt(key, batch([[0.5] * 8])).__len__(), 1)
        with self.assertRaises(vecseal.InvalidInput):
            self.client.encrypt(key, batch([[0.5] * 9]))

    def test_a_closed_idle_connection_is_reopened(self):
        self.client.encrypt("demo", batch([[1.0, 0.0]]))
        # Simulate the daemon's idle timeout by shutting our end of the kept-alive socket.
        self.client._conn.sock.shutdown(socket.SHUT_RDWR)
        self.assertEqual(len(self.client.encrypt("demo", batch([[1.0, 0.0]]))), 1)

    def encrypt_requests(self, key):
        """vecseal_requests_total for (key, encrypt), summed over outcomes, from /metrics."""
        status, _, body = self.client._request("GET", "/metrics", retry_safe=True)
        self.assertEqual(status, 200)
        total = 0.0
        for line in body.decode().splitlines():
            match = re.match(r'vecseal_requests_total\{(.*)\} (\S+)$', line)
            if match and f'key="{key}"' in match.group(1) and \
                    'operation="encrypt"' in match.group(1):
                total += float(match.group(2))
        return total


@unittest.skipUnless(os.environ.get("VECSEAL_DAEMON_PID") and os.environ.get("VECSEAL_STATE_DIR"),
                     "needs a dev daemon whose policy it may change: run via with_daemon.py")
class PolicyTest(unittest.TestCase):
    """Narrows the dev daemon's policy (STATE/policy.json, reloaded on SIGHUP), then restores it."""

    RULE = "python-test-encrypt-demo-only"

    def setUp(self):
        self.policy_path = os.path.join(os.environ["VECSEAL_STATE_DIR"], "policy.json")
        with open(self.policy_path) as f:
            original = f.read()
        self.addCleanup(self.install_policy, original)
        self.install_policy(json.dumps({"version": 1, "rules": [{
            "id": self.RULE, "callers": {"uid": os.getuid()}, "keys": ["demo"],
            "operations": ["encrypt"]}]}))
        self.client = vecseal.Client()
        self.addCleanup(self.client.close)

    def install_policy(self, text):
        """Replaces the policy file and waits (bounded) until the daemon reports the change."""
        temporary = self.policy_path + ".new"
        with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(text)
        os.replace(temporary, self.policy_path)
        wanted = [rule["id"] for rule in json.loads(text)["rules"]]
        with vecseal.Client() as client:
            for _ in range(100):
                os.kill(int(os.environ["VECSEAL_DAEMON_PID"]), signal.SIGHUP)
                grants = [g["rule"] for g in client.whoami()["grants"]]
                if grants == wanted:
                    return
                threading.Event().wait(0.1)
        self.fail(f"the daemon did not load the policy: grants {grants}, wanted {wanted}")

    def test_whoami_names_the_granting_rule(self):
        (grant,) = self.client.whoami()["grants"]
        self.assertEqual((grant["rule"], grant["keys"], grant["operations"]),
                         (self.RULE, ["demo"], ["encrypt"]))

    def test_the_granted_operation_works(self):
        self.assertEqual(len(self.client.encrypt("demo", batch([[1.0, 0.0]]))), 1)

    def test_other_operations_raise_permission_denied(self):
        vectors, tokens = [[1.0, 0.0]], [b"\x01" + b"\x00" * 40]
        cases = [
            ("decrypt on demo", lambda: self.client.decrypt("demo", batch(vectors), tokens),
             "no rule grants decrypt on key 'demo'"),
            ("encrypt on another key", lambda: self.client.encrypt("other", batch(vectors)),
             "no rule grants encrypt on key 'other'"),
            ("rotate demo", lambda: self.client.rotate_key("demo"),
             "no rule grants keys.rotate on key 'demo'"),
        ]
        for name, call, message in cases:
            with self.subTest(name), self.assertRaises(vecseal.PermissionDenied) as caught:
                call()
            self.assertEqual((caught.exception.status, caught.exception.code),
                             (403, "permission_denied"))
            self.assertEqual(caught.exception.message, message)


class InputTest(unittest.TestCase):
    """Checks the client makes before anything is sent."""

    def setUp(self):
        self.client = vecseal.Client(socket="/nonexistent/vecseald.sock")

    def test_invalid_key_names_are_refused_locally(self):
        for name in ("", "Demo", "../keys", "a/b", "-x", "x" * 65, "a b", "é"):
            with self.subTest(name=name), self.assertRaises(vecseal.InvalidInput) as caught:
                self.client.encrypt(name, [[1.0]])
            self.assertEqual(caught.exception.code, "invalid_key_name")

    def test_ragged_batches_are_refused(self):
        with self.assertRaises(vecseal.InvalidInput) as caught:
            self.client.encrypt("demo", [[1.0, 2.0], [1.0, 2.0], [3.0]])
        self.assertEqual(caught.exception.code, "dimension_mismatch")
        self.assertEqual(caught.exception.vector_index, 2)
        self.assertEqual(caught.exception.message, "vector 2 has 1 values, vector 0 has 2")

    def test_values_float32_cannot_hold_are_refused_not_made_infinite(self):
        batches = [[[0.5, 0.5], [1e300, 0.0]]]
        if HAVE_NUMPY:
            batches.append(np.array(batches[0], dtype=np.float64))
        for batch in batches:
            with self.subTest(type=type(batch).__name__), \
                    self.assertRaises(vecseal.InvalidInput) as caught:
                self.client.encrypt("demo", batch)
            self.assertEqual(caught.exception.code, "non_finite_value")
            self.assertEqual(caught.exception.vector_index, 1)
            self.assertEqual(caught.exception.message,
                             "vector 1 has a value outside the float32 range (±3.4e38)")

    @unittest.skipUnless(HAVE_NUMPY, "integer arrays are numpy arrays")
    def test_integer_arrays_are_refused_as_the_cli_refuses_them(self):
        with self.assertRaises(vecseal.InvalidInput) as caught:
            self.client.encrypt("demo", np.arange(6, dtype=np.int64).reshape(2, 3))
        self.assertEqual(caught.exception.code, "invalid_request")
        self.assertEqual(caught.exception.message,
                         "vectors must be a floating-point array, not int64; convert it with "
                         ".astype(numpy.float32)")

    def test_an_empty_batch_needs_no_daemon(self):
        self.assertEqual(len(self.client.encrypt("demo", [])), 0)

    def test_tokens_must_match_vectors(self):
        with self.assertRaises(vecseal.InvalidInput) as caught:
            self.client.decrypt("demo", [[1.0], [2.0]], [b"\x01" * 41])
        self.assertEqual(str(caught.exception), "invalid_request: 2 vectors but 1 tokens")

    def test_tokens_must_have_the_token_size(self):
        with self.assertRaises(vecseal.InvalidInput) as caught:
            self.client.decrypt("demo", [[1.0], [2.0]], [b"\x01" * 41, b"\x01" * 40])
        self.assertEqual(str(caught.exception), "invalid_token: token 1 has 40 bytes, not 41")
        self.assertEqual(caught.exception.vector_index, 1)

    def test_a_missing_socket_is_unavailable_and_named(self):
        with self.assertRaises(vecseal.Unavailable) as caught:
            self.client.keys()
        self.assertEqual(caught.exception.code, "daemon_not_running")
        self.assertIn("/nonexistent/vecseald.sock", caught.exception.message)

    def test_socket_comes_from_argument_then_environment_then_default(self):
        saved = os.environ.pop("VECSEAL_SOCKET", None)
        try:
            self.assertEqual(vecseal.Client().socket_path, vecseal.DEFAULT_SOCKET)
            os.environ["VECSEAL_SOCKET"] = "/tmp/from-env.sock"
            self.assertEqual(vecseal.Client().socket_path, "/tmp/from-env.sock")
            self.assertEqual(vecseal.Client("/tmp/arg.sock").socket_path, "/tmp/arg.sock")
        finally:
            os.environ.pop("VECSEAL_SOCKET", None)
            if saved is not None:
                os.environ["VECSEAL_SOCKET"] = saved


class FakeDaemon:
    """Answers each request on a Unix socket with the next scripted reply.

    A reply is (status, headers, body) or the string "close" (drop the connection unanswered).
    Records the request lines it saw and how many connections it accepted.
    """

    def __init__(self, replies):
        self.replies = list(replies)
        self.requests = []
        self.connections = 0
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, "fake.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while self.replies:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            # Both must close, or the socket stays open behind the reader.
            with conn, conn.makefile("rb") as reader:
                while self.replies:
                    request_line = reader.readline()
                    if not request_line:
                        break
                    length = 0
                    for header in iter(reader.readline, b"\r\n"):
                        name, _, value = header.decode().partition(":")
                        if name.lower() == "content-length":
                            length = int(value)
                    reader.read(length)
                    self.requests.append(request_line.decode().strip())
                    reply = self.replies.pop(0)
                    if reply == "close":
                        break
                    status, headers, body = reply
                    head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n"
                    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                    conn.sendall(head.encode() + b"\r\n" + body)

    def close(self):
        self.listener.close()
        self.dir.cleanup()


def json_reply(status, text):
    return (status, {"Content-Type": "application/json"}, text.encode())


def binary_encrypt_reply(n, d, version):
    body = b"".join(int(0x3f800000).to_bytes(4, "little") for _ in range(n * d))  # 1.0f
    return (200, {"Content-Type": "application/octet-stream", "Vecseal-Key-Version": version,
                  "Vecseal-Dimension": d, "Vecseal-Vectors": n}, body)


class FaultTest(unittest.TestCase):

    def fake(self, replies, **options):
        daemon = FakeDaemon(replies)
        self.addCleanup(daemon.close)
        client = vecseal.Client(daemon.path, **options)
        self.addCleanup(client.close)
        return daemon, client

    def test_error_bodies_map_to_typed_exceptions(self):
        cases = [
            (400, "invalid_json", vecseal.InvalidInput),
            (403, "permission_denied", vecseal.PermissionDenied),
            (404, "key_not_found", vecseal.KeyNotFound),
            (408, "request_timeout", vecseal.Unavailable),
            (409, "key_exists", vecseal.KeyExists),
            (413, "body_too_large", vecseal.InvalidInput),
            (500, "internal", vecseal.VecsealError),
            (503, "hsm_unavailable", vecseal.Unavailable),
        ]
        for status, code, expected in cases:
            with self.subTest(code=code):
                message = f"no rule grants keys.list on key '{code}'"
                body = f'{{"error": {{"code": "{code}", "message": "{message}"}}}}'
                _, client = self.fake([json_reply(status, body)])
                with self.assertRaises(expected) as caught:
                    client.keys()
                self.assertEqual(type(caught.exception), expected)
                self.assertEqual(str(caught.exception), f"{code}: {message}")
                self.assertEqual(caught.exception.status, status)

    def test_a_reply_that_is_not_json_is_a_protocol_error(self):
        _, client = self.fake([json_reply(200, "<html>")])
        with self.assertRaises(vecseal.ProtocolError):
            client.whoami()

    def test_a_non_json_error_body_keeps_the_status(self):
        _, client = self.fake([(502, {}, b"Bad Gateway")])
        with self.assertRaises(vecseal.VecsealError) as caught:
            client.keys()
        self.assertEqual((caught.exception.status, caught.exception.code), (502, "http_error"))

    @unittest.skipUnless(HAVE_NUMPY, "the binary protocol needs numpy")
    def test_a_binary_reply_of_the_wrong_size_is_a_protocol_error(self):
        status, headers, body = binary_encrypt_reply(2, 3, 1)
        _, client = self.fake([(status, headers, body[:-4])])
        with self.assertRaises(vecseal.ProtocolError):
            client.encrypt("demo", [[0.0] * 3] * 2)

    @unittest.skipUnless(HAVE_NUMPY, "the binary protocol needs numpy")
    def test_a_rotation_between_two_requests_of_one_batch_is_refused(self):
        daemon, client = self.fake([binary_encrypt_reply(2, 3, 4), binary_encrypt_reply(1, 3, 5)],
                                   batch_size=2)
        with self.assertRaises(vecseal.KeyVersionChanged):
            client.encrypt("demo", [[0.0] * 3] * 3)
        self.assertEqual(len(daemon.requests), 2)

    def test_a_dropped_keep_alive_connection_is_retried_once(self):
        ok = json_reply(200, '{"keys": []}')
        daemon, client = self.fake([ok, "close", ok])
        self.assertEqual(client.keys(), [])
        self.assertEqual(client.keys(), [])
        self.assertEqual(daemon.connections, 2)
        self.assertEqual(daemon.requests, ["GET /v1/keys HTTP/1.1"] * 3)

    def test_key_changes_are_not_retried_after_a_drop(self):
        ok = json_reply(200, '{"keys": []}')
        daemon, client = self.fake([ok, "close", ok])
        client.keys()
        with self.assertRaises(vecseal.Unavailable) as caught:
            client.rotate_key("demo")
        self.assertEqual(caught.exception.code, "connection_lost")
        self.assertEqual(len(daemon.requests), 2)

    def test_a_silent_daemon_times_out_as_unavailable(self):
        listener_dir = tempfile.TemporaryDirectory()
        self.addCleanup(listener_dir.cleanup)
        path = os.path.join(listener_dir.name, "silent.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(path)
        listener.listen()  # accepts (in the kernel backlog) but never answers
        client = vecseal.Client(path, timeout=0.2)
        self.addCleanup(client.close)
        with self.assertRaises(vecseal.Unavailable) as caught:
            client.keys()
        self.assertEqual(caught.exception.code, "timeout")

    def test_key_names_are_sent_verbatim_in_the_path(self):
        daemon, client = self.fake([json_reply(200, '{"name": "a.b_c-1", "version": 2, '
                                               '"approximation_factor": 1.5, '
                                               '"transform": "permute", "dimension": 8}')])
        info = client.rotate_key("a.b_c-1")
        self.assertEqual(daemon.requests, ["POST /v1/keys/a.b_c-1/rotate HTTP/1.1"])
        self.assertEqual((info.version, info.versions, info.dimension), (2, (2,), 8))


if __name__ == "__main__":
    unittest.main(verbosity=2)
