// LD_PRELOAD into vecseald: its wall clock (CLOCK_REALTIME) reads VECSEAL_TEST_CLOCK_SHIFT
// seconds ahead, as a machine's clock does before an NTP step back. The monotonic clock is left.
#include <dlfcn.h>
#include <time.h>

#include <cstdlib>

namespace {

using ClockGettime = int (*)(clockid_t, timespec*);

time_t Shift() {
  static const time_t shift = [] {
    const char* text = std::getenv("VECSEAL_TEST_CLOCK_SHIFT");
    return text == nullptr ? time_t{0} : static_cast<time_t>(std::atoll(text));
  }();
  return shift;
}

}  // namespace

extern "C" int clock_gettime(clockid_t clock, timespec* time) {
  static const auto real = reinterpret_cast<ClockGettime>(dlsym(RTLD_NEXT, "clock_gettime"));
  const int result = real(clock, time);
  if (result == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE)) {
    time->tv_sec += Shift();
  }
  return result;
}
