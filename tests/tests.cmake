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

find_program(PYTHON3 python3 REQUIRED)
file(GLOB DEVEX_INTEGRATION_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/integration/test_*.py)
foreach(src ${DEVEX_INTEGRATION_TESTS})
  get_filename_component(name ${src} NAME_WE)
  add_test(NAME it_${name} COMMAND ${PYTHON3} ${src})
  set_tests_properties(it_${name} PROPERTIES LABELS integration TIMEOUT 600
    ENVIRONMENT "DEVEXD_BIN=$<TARGET_FILE:devexd>;DEVEXD_SOURCE_DIR=${CMAKE_SOURCE_DIR};DEVEXD_BUILD_DIR=${CMAKE_BINARY_DIR}")
endforeach()
