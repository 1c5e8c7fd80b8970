// The training methods by name: what a config's `method` key may say, what each method is, and
// how to build it. Torch-free, so that config validation, the CLI and the run tools read the
// same list. A new method is its own file (its Method subclass and a function returning its
// spec) and one line in registry.cpp; a program or test may also register one at start-up.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace noprop {

struct Config;
class Method;
struct NoPropNetImpl;

struct MethodSpec {
  std::string name;     // the config value: dt, backprop, ct, fm
  std::string title;    // in reports and figures: NoProp-DT, backprop, ...
  std::string summary;  // one line for --help and the docs
  // One time-conditioned block û_θ(z_t, x, t) (NoProp-CT, -FM) instead of T discrete blocks.
  bool continuous_time = false;
  // Distributed runs may spread its blocks over the processes (config parallel: block);
  // otherwise every distributed run of it is data-parallel.
  bool block_parallel = false;
  // The inference options its predict() reads (noprop eval refuses flags for the others).
  struct Uses {
    bool steps = false, solver = false, sampler = false, readout = false;
  } inference;
  // Builds the method around a network already on its device.
  std::function<std::unique_ptr<Method>(const Config&, std::shared_ptr<NoPropNetImpl>)> make;
};

// Adds a method; an Error if the name is taken. Returns true, to initialise a static with.
bool register_method(MethodSpec spec);
// Every method, the built-in ones first.
const std::vector<MethodSpec>& method_specs();
std::vector<std::string> method_names();
// The spec of `name`; an Error naming the known ones (with a did-you-mean) otherwise.
const MethodSpec& method_spec(const std::string& name);

}  // namespace noprop
