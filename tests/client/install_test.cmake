# ctest: install the client SDK to a temporary prefix, then build and run a consumer against it,
# once with find_package(vecseal) and once with pkg-config.
# -DBUILD_DIR=<vecseal build tree> -DSOURCE_DIR=<tests/client> -DWORK_DIR=<scratch>
file(REMOVE_RECURSE ${WORK_DIR})
set(prefix ${WORK_DIR}/prefix)
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()
function(expect_output program)
  set(socket ${WORK_DIR}/none.sock)
  run(${program} ${WORK_DIR}/m.npy ${socket})
  set(expected "formats ok\nconnect_failed: cannot connect to ${socket}: no such file\n")
  if(NOT last_output STREQUAL expected)
    message(FATAL_ERROR "${program} printed:\n${last_output}\nexpected:\n${expected}")
  endif()
endfunction()

run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix} --component client_sdk)

run(${CMAKE_COMMAND} -S ${SOURCE_DIR}/consumer -B ${WORK_DIR}/cmake-build
    -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_BUILD_TYPE=Release)
run(${CMAKE_COMMAND} --build ${WORK_DIR}/cmake-build)
expect_output(${WORK_DIR}/cmake-build/my_service)

file(GLOB_RECURSE pc_files ${prefix}/*/vecseal.pc)
list(GET pc_files 0 pc_file)
get_filename_component(pc_dir ${pc_file} DIRECTORY)
run(sh -c "PKG_CONFIG_PATH='${pc_dir}' c++ ${SOURCE_DIR}/consumer/main.cc -o ${WORK_DIR}/pc-consumer $(PKG_CONFIG_PATH='${pc_dir}' pkg-config --cflags --libs vecseal)")
expect_output(${WORK_DIR}/pc-consumer)
file(REMOVE_RECURSE ${WORK_DIR})
