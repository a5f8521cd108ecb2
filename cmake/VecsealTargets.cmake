# Shared compile settings for every vecseal target.
add_library(vecseal_build_flags INTERFACE)
target_compile_options(vecseal_build_flags INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wold-style-cast
  -Wcast-align -Wnull-dereference -Wformat=2 -Wimplicit-fallthrough
  -fstack-protector-strong -D_GLIBCXX_ASSERTIONS
  $<$<NOT:$<CONFIG:Debug>>:-D_FORTIFY_SOURCE=2>)
if(VECSEAL_WERROR)
  target_compile_options(vecseal_build_flags INTERFACE -Werror)
endif()
include(${CMAKE_CURRENT_LIST_DIR}/Sanitizers.cmake)
target_link_options(vecseal_build_flags INTERFACE -Wl,-z,relro,-z,now)

# vecseal_library(NAME SOURCES... DEPS...): a static library with headers under
# <folder>/include/vecseal/<folder>/.
function(vecseal_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;PUBLIC_DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  target_include_directories(${name} PUBLIC
    $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include>
    $<INSTALL_INTERFACE:include>)
  target_link_libraries(${name} PUBLIC ${ARG_PUBLIC_DEPS} PRIVATE vecseal_build_flags ${ARG_PRIVATE_DEPS})
endfunction()

# vecseal_test(NAME SOURCES... DEPS...): a GoogleTest binary registered with ctest.
# SERIAL: each test runs with no other test beside it (ctest RUN_SERIAL), for tests that measure
# a latency which other tests' load on the same cores would distort.
function(vecseal_test name)
  cmake_parse_arguments(ARG "SERIAL" "TIMEOUT" "SOURCES;DEPS;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE vecseal_build_flags GTest::gtest GTest::gmock GTest::gtest_main ${ARG_DEPS})
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  set(serial FALSE)
  if(ARG_SERIAL)
    set(serial TRUE)
  endif()
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60
    PROPERTIES TIMEOUT ${ARG_TIMEOUT} LABELS "${ARG_LABELS}" RUN_SERIAL ${serial})
endfunction()
