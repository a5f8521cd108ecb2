// Status and Result: how every vecseal layer reports errors from untrusted input or the
// environment. Broken internal invariants assert instead.
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace vecseal {

// Canonical error classes. Each maps to one HTTP status in the daemon.
enum class Code : uint8_t {
  kOk = 0,
  kInvalidArgument,       // 400: malformed or out-of-range input
  kAuthenticationFailed,  // 400: a token or parameter tag did not verify
  kPermissionDenied,      // 403: no policy rule grants this
  kNotFound,              // 404: unknown key or version
  kAlreadyExists,         // 409
  kFailedPrecondition,    // 409: the state does not allow this (e.g. dimension fixed by key)
  kResourceExhausted,     // 413/429/503: a configured limit was reached
  kUnavailable,           // 503: HSM or audit log unavailable; retrying may succeed
  kInternal,              // 500: a bug or an impossible environment state
};

std::string_view CodeName(Code code);

// A success, or an error with a machine-readable reason (snake_case, stable: it becomes the JSON
// "code" of an error body) and a sentence for people. Errors about one vector of a batch carry
// its index.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string reason, std::string message)
      : code_(code), reason_(std::move(reason)), message_(std::move(message)) {
    assert(code != Code::kOk);
  }

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& reason() const { return reason_; }
  const std::string& message() const { return message_; }
  std::optional<size_t> vector_index() const { return vector_index_; }

  Status&& WithVectorIndex(size_t index) && {
    vector_index_ = index;
    return std::move(*this);
  }

  // "reason: message", or "ok".
  std::string ToString() const;

 private:
  Code code_ = Code::kOk;
  std::string reason_;
  std::string message_;
  std::optional<size_t> vector_index_;
};

// Either a value or a non-ok Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : state_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : state_(std::move(status)) {  // NOLINT: implicit by design
    assert(!std::get<Status>(state_).ok());
  }

  bool ok() const { return std::holds_alternative<T>(state_); }
  const Status& status() const {
    static const Status kOkStatus;
    return ok() ? kOkStatus : std::get<Status>(state_);
  }
  Status TakeStatus() && { return ok() ? Status() : std::move(std::get<Status>(state_)); }

  T& value() & {
    assert(ok());
    return std::get<T>(state_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<T>(state_);
  }
  T&& value() && {
    assert(ok());
    return std::get<T>(std::move(state_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> state_;
};

}  // namespace vecseal

// Returns early from the enclosing function when `expr` yields a non-ok Status.
#define VECSEAL_RETURN_IF_ERROR(expr)                  \
  do {                                                 \
    ::vecseal::Status vecseal_status_ = (expr);        \
    if (!vecseal_status_.ok()) return vecseal_status_; \
  } while (false)
