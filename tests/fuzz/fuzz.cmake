# The libFuzzer targets (tests/fuzz/fuzz_<name>.c), built only with
# -DDEVEX_FUZZ=ON and clang (tests/fuzz/run.sh makes that build), and the
# suite's test that runs them (-DDEVEX_FUZZ_TEST=ON: scripts/test.sh sets it
# for its Release build only, so the ~5 minutes are spent once).
if(DEVEX_FUZZ)
  file(GLOB DEVEX_FUZZ_TARGETS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz_*.c)
  add_custom_target(fuzz)
  foreach(src ${DEVEX_FUZZ_TARGETS})
    get_filename_component(name ${src} NAME_WE)
    add_executable(${name} EXCLUDE_FROM_ALL ${src})
    target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR}/tests/fuzz)
    # the Lua harnesses load the app's modules from the source tree
    target_compile_definitions(${name} PRIVATE DEVEX_FUZZ_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
    target_link_libraries(${name} PRIVATE devexcore)
    target_link_options(${name} PRIVATE -fsanitize=fuzzer)
    add_dependencies(fuzz ${name})
  endforeach()
endif()

option(DEVEX_FUZZ_TEST "Register the ctest that builds the fuzz targets with clang and runs each for FUZZ_SECONDS" OFF)
if(DEVEX_FUZZ_TEST)
  # Fails (does not skip) when clang or its libFuzzer runtime is missing.
  add_test(NAME fuzz_short COMMAND bash ${CMAKE_SOURCE_DIR}/tests/fuzz/run.sh fuzz)
  # COST: started first, so its ~6 minutes on one core overlap the other tests
  # instead of running alone at the end (ctest -j runs costlier tests first)
  set_tests_properties(fuzz_short PROPERTIES LABELS fuzz TIMEOUT 1200 COST 100000
    ENVIRONMENT "FUZZ_SECONDS=30;FUZZ_BUILD_DIR=${CMAKE_BINARY_DIR}/fuzz-build;FUZZ_OUT=${CMAKE_BINARY_DIR}/fuzz-out")
endif()
