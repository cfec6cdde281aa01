# Test registration for ctest: C unit tests (tests/unit/test_*.c, each its own
# executable linked to the same code as devexd) and integration tests
# (tests/integration/test_*.py, run against the built binary and real servers).
file(GLOB DEVEX_UNIT_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/unit/test_*.c)
foreach(src ${DEVEX_UNIT_TESTS})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src})
  target_include_directories(${name} PRIVATE ${CMAKE_SOURCE_DIR}/tests/unit)
  target_link_libraries(${name} PRIVATE devexcore)
  add_test(NAME unit_${name} COMMAND ${name})
  set_tests_properties(unit_${name} PROPERTIES LABELS unit TIMEOUT 120)
endforeach()

# Seconds each long integration test took (Release and ASan builds, 2 cores,
# rounded up). ctest -j starts the costliest tests first; once a build tree has
# run ctest it uses its own Testing/Temporary/CTestCostData.txt, but a fresh
# clone has none and would start these in name order, so one could begin last
# and run alone at the end. Tests not listed cost 10 (about the median), unit
# tests 0. Only the order depends on these numbers, never a result.
set(DEVEX_TEST_COSTS
  test_crash_injection=80 test_packaging=70 test_k8s_storm=70 test_k8s_start_wait=60 test_session_events=55
  test_k8s_shared_watch=55 test_lifecycle_failures=40 test_auth=30 test_ping=30
  test_manifests=30 test_runner_image=30 test_workload_render=30 test_h2_abuse=25
  test_sweep=25 test_runner_standin=25 test_abuse=20 test_redis_tls=20
  test_k8s_runtime=20 test_k8s_agent=20 test_k8s=20 test_s3=20
  test_runner_storage=20 test_checkpoints=20
  test_redis_sentinel=110 test_sweep_scale=20)

find_program(PYTHON3 python3 REQUIRED)
file(GLOB DEVEX_INTEGRATION_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/integration/test_*.py)
foreach(src ${DEVEX_INTEGRATION_TESTS})
  get_filename_component(name ${src} NAME_WE)
  add_test(NAME it_${name} COMMAND ${PYTHON3} ${src})
  set(cost 10)
  foreach(entry ${DEVEX_TEST_COSTS})
    if(entry MATCHES "^${name}=([0-9]+)$")
      set(cost ${CMAKE_MATCH_1})
    endif()
  endforeach()
  set_tests_properties(it_${name} PROPERTIES LABELS integration TIMEOUT 600 COST ${cost}
    ENVIRONMENT "DEVEXD_BIN=$<TARGET_FILE:devexd>;DEVEXD_SOURCE_DIR=${CMAKE_SOURCE_DIR};DEVEXD_BUILD_DIR=${CMAKE_BINARY_DIR}")
endforeach()
# Two of ctest's slots for the crash-injection loop (scripts/test.sh runs 1.5
# tests per core): its fault-free starts must be Ready within the 8 s of its
# policy, which a machine loaded far beyond its cores missed; with two slots it
# shares the machine with as many tests as under one test per core.
if(TEST it_test_crash_injection)
  set_tests_properties(it_test_crash_injection PROPERTIES PROCESSORS 2)
endif()
