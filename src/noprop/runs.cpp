#include "noprop/runs.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "noprop/datasets.h"
#include "noprop/methods/registry.h"
#include "noprop/util.h"

namespace fs = std::filesystem;

namespace noprop {
namespace {

std::vector<std::string> split(const std::string& line, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(line);
  std::string cell;
  while (std::getline(ss, cell, sep)) out.push_back(cell);
  if (!line.empty() && line.back() == sep) out.emplace_back();
  return out;
}

double parse_cell(const std::string& cell, const fs::path& file, std::size_t line) {
  if (cell.empty()) return NAN;
  try {
    std::size_t used = 0;
    double v = std::stod(cell, &used);
    if (used == cell.size()) return v;
  } catch (const std::exception&) {
  }
  throw Error(file.string() + ": line " + std::to_string(line) + ": '" + cell + "' is not a number");
}

std::string fixed(double v, int digits) {
  if (!std::isfinite(v)) return "—";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

// Titles of registered names; a run of a method or data set this program does not know keeps
// its name.
std::string dataset_label(const std::string& name) {
  for (const auto& s : dataset_specs())
    if (s.name == name) return s.title;
  return name;
}

// The run's final accuracy values: the inference runs of summary.json, else the last epoch's.
std::vector<double> final_accuracies(const RunRecord& r) {
  if (!r.summary.is_null() && r.summary.contains("test_accuracy_runs"))
    return r.summary["test_accuracy_runs"].get<std::vector<double>>();
  auto acc = r.column("test_accuracy");
  return acc.empty() ? std::vector<double>{} : std::vector<double>{acc.back()};
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? NAN : s / double(v.size());
}

double sample_std(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  double m = mean(v), s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / double(v.size() - 1));
}

}  // namespace

bool RunRecord::has_column(const std::string& name) const {
  return std::find(columns.begin(), columns.end(), name) != columns.end();
}

std::vector<double> RunRecord::column(const std::string& name) const {
  auto it = std::find(columns.begin(), columns.end(), name);
  if (it == columns.end()) throw Error((dir / "metrics.csv").string() + ": no column '" + name + "'");
  const auto k = std::size_t(it - columns.begin());
  std::vector<double> out;
  for (const auto& row : rows) out.push_back(row[k]);
  return out;
}

std::vector<double> RunRecord::wall_seconds() const {
  auto train = column("seconds"), eval = column("eval_seconds");
  std::vector<double> out;
  double t = 0;
  for (std::size_t i = 0; i < train.size(); ++i) {
    t += train[i] + (std::isfinite(eval[i]) ? eval[i] : 0.0);
    out.push_back(t);
  }
  return out;
}

std::vector<std::string> RunRecord::loss_columns() const {
  std::vector<std::string> out;
  for (const auto& c : columns) {
    if (c.rfind("loss_", 0) != 0) continue;
    auto v = column(c);
    if (std::any_of(v.begin(), v.end(), [](double x) { return std::isfinite(x) && x > 0; })) out.push_back(c);
  }
  if (out.size() > 1) out.erase(std::remove(out.begin(), out.end(), "loss_total"), out.end());
  return out;
}

std::string RunRecord::method_label() const {
  for (const auto& s : method_specs())
    if (s.name == cfg.method) return s.title;
  return cfg.method;
}

std::string RunRecord::dataset_label() const { return noprop::dataset_label(cfg.dataset); }

std::string RunRecord::embedding_label() const {
  if (cfg.embedding == "learned") return "dim=" + std::to_string(cfg.embedding_dim);
  return cfg.embedding;
}

RunRecord read_run(const fs::path& dir) {
  RunRecord r;
  r.dir = dir;
  r.name = fs::path(dir).lexically_normal().filename().string();
  if (r.name.empty()) r.name = fs::path(dir).lexically_normal().parent_path().filename().string();
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Error(dir.string() + ": not a run directory");
  r.cfg = load_config_file(dir / "config.yaml");

  const fs::path csv = dir / "metrics.csv";
  std::istringstream in(read_text_file(csv));
  std::string line;
  if (!std::getline(in, line) || line.empty()) throw Error(csv.string() + ": empty (no header)");
  r.columns = split(line, ',');
  for (const char* need : {"epoch", "test_accuracy", "seconds", "eval_seconds"})
    if (!r.has_column(need)) throw Error(csv.string() + ": no column '" + std::string(need) + "'");
  for (std::size_t n = 2; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    auto cells = split(line, ',');
    if (cells.size() != r.columns.size())
      throw Error(csv.string() + ": line " + std::to_string(n) + " has " + std::to_string(cells.size()) +
                  " values, the header " + std::to_string(r.columns.size()));
    std::vector<double> row;
    for (const auto& c : cells) row.push_back(parse_cell(c, csv, n));
    r.rows.push_back(std::move(row));
  }

  const fs::path sj = dir / "summary.json";
  if (fs::exists(sj, ec)) {
    r.summary = nlohmann::json::parse(read_text_file(sj), nullptr, /*allow_exceptions=*/false);
    if (r.summary.is_discarded() || !r.summary.is_object()) throw Error(sj.string() + ": not a JSON object");
  }
  return r;
}

std::vector<RunRecord> read_runs(const std::vector<std::string>& dirs) {
  if (dirs.empty()) throw Error("give at least one run directory");
  std::vector<RunRecord> runs;
  for (const auto& d : dirs) runs.push_back(read_run(d));
  return runs;
}

double default_target(const std::vector<RunRecord>& runs) {
  double target = INFINITY;
  for (const auto& r : runs) {
    auto acc = r.column("test_accuracy");
    double best = -INFINITY;
    for (double a : acc)
      if (std::isfinite(a)) best = std::max(best, a);
    if (std::isfinite(best)) target = std::min(target, best);
  }
  return std::isfinite(target) ? target : 0.0;
}

std::string compare_table(const std::vector<RunRecord>& runs, double target) {
  const std::string t = fixed(target, 2) + " %";
  std::ostringstream out;
  out << "| run | method | data set | epochs | best % (epoch) | final % | epochs to " << t << " | seconds to " << t
      << " | s/epoch | peak MB |\n|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& r : runs) {
    auto acc = r.column("test_accuracy"), epoch = r.column("epoch"), wall = r.wall_seconds(),
         train = r.column("seconds");
    std::size_t best = 0;  // the best evaluated epoch (eval_every leaves nan between)
    for (std::size_t i = 1; i < acc.size(); ++i)
      if (acc[i] > acc[best] || !std::isfinite(acc[best])) best = i;
    std::string to_epochs = "—", to_seconds = "—";
    for (std::size_t i = 0; i < acc.size(); ++i)
      if (acc[i] >= target) {
        to_epochs = fixed(epoch[i], 0), to_seconds = fixed(wall[i], 0);
        break;
      }
    const auto fin = final_accuracies(r);
    const double peak =
        !r.summary.is_null() && r.summary.contains("peak_rss_mb") ? r.summary["peak_rss_mb"].get<double>() : NAN;
    out << "| " << r.name << " | " << r.method_label() << " " << r.embedding_label() << " | " << r.dataset_label()
        << " | " << acc.size() << " | "
        << (acc.empty() ? "—" : fixed(acc[best], 2) + " (" + fixed(epoch[best], 0) + ")") << " | "
        << fixed(mean(fin), 2) << " | " << to_epochs << " | " << to_seconds << " | " << fixed(mean(train), 1) << " | "
        << fixed(peak, 0) << " |\n";
  }
  return out.str();
}

std::string report_table(const std::vector<RunRecord>& runs) {
  // Rows in the paper's method order (back-prop first), then any other registered method.
  std::vector<std::string> method_order{method_spec("backprop").title};
  for (const auto& s : method_specs())
    if (s.name != "backprop") method_order.push_back(s.title);
  static const std::vector<std::string> kEmbeddings{"one-hot", "dim=20", "prototype"};
  const std::vector<std::string> dataset_order = dataset_names();
  struct Cell {
    std::vector<double> values;
    std::vector<std::string> runs;
    std::vector<long long> seeds;
    std::set<std::string> epochs, architectures;  // pooled runs should agree on these
  };
  std::map<std::tuple<std::string, std::string, std::string>, Cell> cells;  // method, embedding, data set
  std::vector<std::string> skipped;
  for (const auto& r : runs) {
    if (r.summary.is_null()) {
      skipped.push_back(r.name);
      continue;
    }
    auto& c = cells[{r.method_label(), r.embedding_label(), r.cfg.dataset}];
    for (double v : final_accuracies(r)) c.values.push_back(v);
    c.runs.push_back(r.name);
    c.seeds.push_back(r.cfg.seed);
    c.epochs.insert(std::to_string(r.rows.size()));
    c.architectures.insert(r.cfg.architecture);
  }
  auto order = [](const std::vector<std::string>& known, const std::vector<std::string>& seen) {
    std::vector<std::string> out;
    for (const auto& k : known)
      if (std::find(seen.begin(), seen.end(), k) != seen.end()) out.push_back(k);
    for (const auto& s : seen)
      if (std::find(out.begin(), out.end(), s) == out.end()) out.push_back(s);
    return out;
  };
  std::vector<std::string> methods_seen, datasets_seen;
  for (const auto& [key, c] : cells)
    methods_seen.push_back(std::get<0>(key)), datasets_seen.push_back(std::get<2>(key));
  const auto methods = order(method_order, methods_seen), datasets = order(dataset_order, datasets_seen);

  std::ostringstream out;
  out << "| method |";
  for (const auto& d : datasets) out << " " << dataset_label(d) << " |";
  out << "\n|---|";
  for (std::size_t i = 0; i < datasets.size(); ++i) out << "---|";
  out << "\n";
  for (const auto& m : methods) {
    std::vector<std::string> emb_seen;
    for (const auto& [key, c] : cells)
      if (std::get<0>(key) == m) emb_seen.push_back(std::get<1>(key));
    const auto embeddings = order(kEmbeddings, emb_seen);
    out << "| " << m << " " << join(embeddings, " / ") << " |";
    for (const auto& d : datasets) {
      std::vector<std::string> parts;
      for (const auto& e : embeddings) {
        auto it = cells.find({m, e, d});
        parts.push_back(it == cells.end()
                            ? "—"
                            : fixed(mean(it->second.values), 2) + " ± " + fixed(sample_std(it->second.values), 2));
      }
      out << " " << join(parts, " / ") << " |";
    }
    out << "\n";
  }
  out << "\nTest accuracy (%) at the end of training, mean ± sample standard deviation over every run (seed) and its "
         "final inference runs:\n\n";
  for (const auto& [key, c] : cells) {
    std::vector<std::string> seeds;
    for (auto s : c.seeds) seeds.push_back(std::to_string(s));
    out << "- " << std::get<0>(key) << " " << std::get<1>(key) << ", " << dataset_label(std::get<2>(key)) << ": "
        << c.runs.size() << " run(s) (seed " << join(seeds) << "), " << c.values.size() << " values: " << join(c.runs)
        << "; epochs " << join({c.epochs.begin(), c.epochs.end()}, " / ") << ", "
        << join({c.architectures.begin(), c.architectures.end()}, " / ") << " architecture"
        << (c.epochs.size() > 1 || c.architectures.size() > 1 ? " (runs that differ are pooled)" : "") << "\n";
  }
  if (!skipped.empty()) out << "\nLeft out (no summary.json: unfinished): " << join(skipped) << "\n";
  return out.str();
}

}  // namespace noprop
