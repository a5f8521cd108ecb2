#include "vecseal/wire/http_status.h"

namespace vecseal::wire {

unsigned HttpStatusFor(Code code, std::string_view reason) {
  if (code == Code::kOk) return 200;
  for (const ReasonStatus& row : kReasonStatuses) {
    if (row.reason == reason) return row.http_status;
  }
  for (const CodeStatus& row : kCodeStatuses) {
    if (row.code == code) return row.http_status;
  }
  return 500;
}

Code CodeForHttpStatus(unsigned http_status) {
  for (const CodeStatus& row : kCodeStatuses) {
    if (row.http_status == http_status) return row.code;
  }
  return Code::kInternal;
}

}  // namespace vecseal::wire
