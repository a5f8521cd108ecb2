#include "support/fake_peer_identifier.h"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <filesystem>
#include <utility>

namespace vecseal::daemon::testing {

class FakePeerIdentifier::FakePeer final : public Peer {
 public:
  explicit FakePeer(const FakePeerIdentifier& source) : source_(source) {}

  Result<const policy::CallerIdentity*> Refresh(policy::DigestNeeds) override {
    std::shared_ptr<const Current> current;
    {
      std::lock_guard lock(source_.mutex_);
      current = source_.current_;
    }
    if (!current->failure.ok()) return current->failure;
    held_ = std::move(current);  // kept alive until the next Refresh
    return &held_->identity;
  }

 private:
  const FakePeerIdentifier& source_;
  std::shared_ptr<const Current> held_;
};

FakePeerIdentifier::FakePeerIdentifier() {
  policy::CallerIdentity self;
  self.pid = getpid();
  self.uid = geteuid();
  self.gid = getegid();
  if (const passwd* user = getpwuid(self.uid)) self.user = user->pw_name;
  if (const group* group = getgrgid(self.gid)) self.group = group->gr_name;
  std::error_code ignored;
  self.exe = std::filesystem::read_symlink("/proc/self/exe", ignored).string();
  self.exe_sha256_unknown = policy::kDigestNotNeeded;
  Set(std::move(self));
}

void FakePeerIdentifier::Set(policy::CallerIdentity identity) {
  auto next = std::make_shared<const Current>(Current{std::move(identity), Status::Ok()});
  std::lock_guard lock(mutex_);
  current_ = std::move(next);
}

void FakePeerIdentifier::Fail(Status status) {
  std::lock_guard lock(mutex_);
  current_ = std::make_shared<const Current>(Current{current_->identity, std::move(status)});
}

policy::CallerIdentity FakePeerIdentifier::identity() const {
  std::lock_guard lock(mutex_);
  return current_->identity;
}

std::unique_ptr<Peer> FakePeerIdentifier::Identify(int, policy::DigestNeeds) {
  return std::make_unique<FakePeer>(*this);
}

}  // namespace vecseal::daemon::testing
