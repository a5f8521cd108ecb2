#include "vecseal/daemon/peer_identifier.h"

#include <optional>
#include <utility>

namespace vecseal::daemon {
namespace {

class KernelPeer final : public Peer {
 public:
  KernelPeer(Result<policy::PeerIdentity> peer, policy::IdentityResolver& resolver)
      : resolver_(resolver) {
    if (peer.ok()) {
      peer_.emplace(std::move(peer).value());
    } else {
      error_ = std::move(peer).TakeStatus();
    }
  }

  Result<const policy::CallerIdentity*> Refresh(policy::DigestNeeds needs) override {
    if (!peer_) return error_;
    Status status = peer_->Refresh(resolver_, needs);
    if (!status.ok()) return status;
    return &peer_->identity();
  }

 private:
  policy::IdentityResolver& resolver_;
  std::optional<policy::PeerIdentity> peer_;
  Status error_;  // why the peer could not be identified at accept()
};

}  // namespace

std::unique_ptr<Peer> KernelPeerIdentifier::Identify(int fd, policy::DigestNeeds needs) {
  return std::make_unique<KernelPeer>(policy::PeerIdentity::FromSocket(fd, resolver_, needs),
                                      resolver_);
}

}  // namespace vecseal::daemon
