// A registry of named specs (methods, blocks, data sets): the built-in ones listed once where
// the registry is defined, more added at start-up by programs and tests. Lookups of unknown
// names are an Error that lists the known ones with a did-you-mean.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "noprop/util.h"

namespace noprop {

template <class Spec>
class Registry {
 public:
  Registry(std::string kind, std::vector<Spec> builtins) : kind_(std::move(kind)), specs_(std::move(builtins)) {}

  bool add(Spec spec) {
    for (const auto& s : specs_)
      if (s.name == spec.name) throw Error(kind_ + " '" + spec.name + "' is registered twice");
    specs_.push_back(std::move(spec));
    return true;
  }
  const std::vector<Spec>& all() const { return specs_; }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& s : specs_) out.push_back(s.name);
    return out;
  }
  const Spec& get(const std::string& name) const {
    for (const auto& s : specs_)
      if (s.name == name) return s;
    const std::string hint = closest_match(name, names());
    throw Error("unknown " + kind_ + " '" + name + "'" + (hint.empty() ? "" : " (did you mean '" + hint + "'?)") +
                "; known: " + join(names()));
  }

 private:
  std::string kind_;
  std::vector<Spec> specs_;
};

}  // namespace noprop
