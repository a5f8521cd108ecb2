// A plugin with one function: loading it is the point, not calling it.
extern "C" int vecseal_test_plugin_answer();
extern "C" int vecseal_test_plugin_answer() { return 42; }
