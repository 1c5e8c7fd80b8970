#include "noprop/methods/registry.h"

#include "noprop/registry.h"

namespace noprop {

// The built-in methods, each defined beside its class.
MethodSpec dt_method_spec();        // methods/dt.cpp
MethodSpec backprop_method_spec();  // methods/backprop.cpp
MethodSpec ct_method_spec();        // methods/ct.cpp
MethodSpec fm_method_spec();        // methods/fm.cpp

namespace {
Registry<MethodSpec>& registry() {
  static Registry<MethodSpec> r("method",
                                {dt_method_spec(), backprop_method_spec(), ct_method_spec(), fm_method_spec()});
  return r;
}
}  // namespace

bool register_method(MethodSpec spec) { return registry().add(std::move(spec)); }
const std::vector<MethodSpec>& method_specs() { return registry().all(); }
std::vector<std::string> method_names() { return registry().names(); }
const MethodSpec& method_spec(const std::string& name) { return registry().get(name); }

}  // namespace noprop
