// A PeerIdentifier that reports a given identity for every connection, so that policy decisions
// can be tested for callers other than the test process (another uid, a unit, an exe digest).
#pragma once

#include <memory>
#include <mutex>

#include "vecseal/daemon/peer_identifier.h"

namespace vecseal::daemon::testing {

class FakePeerIdentifier final : public PeerIdentifier {
 public:
  // The test process as the kernel reports it: its pid, effective uid and gid, their names, its
  // executable; no unit, and digests reported as not needed.
  FakePeerIdentifier();

  // Every connection, open or later, is this caller from its next request on; an error status
  // is what each Refresh then returns (a peer that is gone, /proc unreadable).
  void Set(policy::CallerIdentity identity);
  void Fail(Status status);
  policy::CallerIdentity identity() const;

  std::unique_ptr<Peer> Identify(int fd, policy::DigestNeeds needs) override;

 private:
  struct Current {
    policy::CallerIdentity identity;
    Status failure;
  };
  class FakePeer;

  mutable std::mutex mutex_;
  std::shared_ptr<const Current> current_;  // guarded by mutex_
};

}  // namespace vecseal::daemon::testing
