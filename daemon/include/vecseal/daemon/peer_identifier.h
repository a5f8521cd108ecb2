// Who is on the other end of a connection, as Service asks it: the kernel's word in the daemon
// (KernelPeerIdentifier, over policy::PeerIdentity), a given identity in tests.
#pragma once

#include <memory>

#include "vecseal/core/status.h"
#include "vecseal/policy/identity.h"

namespace vecseal::daemon {

// One connection's peer. A connection's requests are handled one at a time, so it needs no lock.
class Peer {
 public:
  virtual ~Peer() = default;
  // The peer's identity for the next request, re-read when it may have changed (an exec, or
  // `needs` asking for a digest not computed before); valid until the next call. An error
  // (peer_gone, identity_unavailable, ...) means the request must be refused.
  virtual Result<const policy::CallerIdentity*> Refresh(policy::DigestNeeds needs) = 0;
};

class PeerIdentifier {
 public:
  virtual ~PeerIdentifier() = default;
  // Called right after accept(): the peer of the connected socket `fd`, computing the digests
  // `needs` asks for. Never null; a peer that could not be identified refuses every Refresh.
  virtual std::unique_ptr<Peer> Identify(int fd, policy::DigestNeeds needs) = 0;
};

// The peer's credentials from the kernel and its program from /proc (policy::PeerIdentity).
class KernelPeerIdentifier final : public PeerIdentifier {
 public:
  // `resolver` must outlive this and every Peer it returns.
  explicit KernelPeerIdentifier(policy::IdentityResolver& resolver) : resolver_(resolver) {}
  std::unique_ptr<Peer> Identify(int fd, policy::DigestNeeds needs) override;

 private:
  policy::IdentityResolver& resolver_;
};

}  // namespace vecseal::daemon
