#include "noprop/plot.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "noprop/util.h"

namespace fs = std::filesystem;
extern char** environ;

namespace noprop {
namespace {

// gnuplot single-quoted string: only ' needs escaping (as '').
std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

std::string cell(double v) {
  if (!std::isfinite(v)) return "?";
  std::ostringstream ss;
  ss.precision(9);
  ss << v;
  return ss.str();
}

// Columns: epoch, wall-clock seconds, test accuracy, then `losses`.
std::string run_table(const RunRecord& r, const std::vector<std::string>& losses) {
  auto epoch = r.column("epoch"), wall = r.wall_seconds(), acc = r.column("test_accuracy");
  std::vector<std::vector<double>> loss;
  for (const auto& l : losses) loss.push_back(r.column(l));
  std::string text;
  for (std::size_t i = 0; i < epoch.size(); ++i) {
    text += cell(epoch[i]) + " " + cell(wall[i]) + " " + cell(acc[i]);
    // Appended in two steps: GCC 12 warns falsely (-Wstringop-overflow) on " " + a temporary.
    for (const auto& l : loss) text.append(" ").append(cell(l[i] > 0 ? l[i] : NAN));
    text += "\n";
  }
  return text;
}

std::string title(const RunRecord& r) {
  return r.name + ": " + r.method_label() + " " + r.embedding_label() + ", " + r.dataset_label();
}

std::string time_axis(const std::vector<RunRecord>& runs) {
  double longest = 0;
  for (const auto& r : runs) {
    auto w = r.wall_seconds();
    if (!w.empty()) longest = std::max(longest, w.back());
  }
  return longest > 3 * 3600 ? "hours" : longest > 180 ? "minutes" : "seconds";
}

double time_scale(const std::string& unit) { return unit == "hours" ? 3600 : unit == "minutes" ? 60 : 1; }

// Whole-epoch ticks unless there are too many epochs for them.
std::string epoch_ticks(const std::vector<RunRecord>& runs) {
  std::size_t most = 0;
  for (const auto& r : runs) most = std::max(most, r.rows.size());
  return most <= 20 ? "set xtics 1\n" : "set xtics autofreq\n";
}

// The two x axes of every figure: epoch (column 1) and wall-clock time (column 2, in `unit`).
struct XAxis {
  std::string column, label, ticks;
};
std::vector<XAxis> x_axes(const std::vector<RunRecord>& runs) {
  const std::string unit = time_axis(runs);
  return {{"1", "epoch", epoch_ticks(runs)},
          {"($2/" + cell(time_scale(unit)) + ")", "wall-clock " + unit, "set xtics autofreq\n"}};
}

// Runs gnuplot on `script` in `work`, then renames work/out.{png,svg} to PREFIX.{png,svg}.
std::vector<fs::path> render(const fs::path& work, const std::string& body, const fs::path& prefix, int rows) {
  const int w = 1200, h = 450 * rows;
  std::string script = "set datafile missing '?'\nset encoding utf8\n";
  script += "set terminal pngcairo noenhanced size " + std::to_string(w) + "," + std::to_string(h) +
            " font ',10'\nset output " + quote((work / "out.png").string()) + "\n" + body;
  script += "set terminal svg noenhanced size " + std::to_string(w) + "," + std::to_string(h) +
            " font 'sans,10'\nset output " + quote((work / "out.svg").string()) + "\n" + body + "set output\n";
  write_file_atomic(work / "plot.gp", script);

  const std::string program = gnuplot_program();
  const std::string log = (work / "gnuplot.log").string(), gp = (work / "plot.gp").string();
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::vector<char*> argv{const_cast<char*>(program.c_str()), const_cast<char*>(gp.c_str()), nullptr};
  pid_t pid = 0;
  int rc = posix_spawnp(&pid, program.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0)
    throw Error("cannot run " + program + ": " + std::strerror(rc) +
                " (install gnuplot-nox, or name the program in $NOPROP_GNUPLOT)");
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  std::error_code ec;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !fs::exists(work / "out.png", ec) ||
      !fs::exists(work / "out.svg", ec)) {
    std::string first;
    std::istringstream in(read_text_file(log));
    for (std::string line; std::getline(in, line);)
      if (line.find_first_not_of(" \t^") != std::string::npos) first = line;  // gnuplot's last line says why
    throw Error(program + " failed" + (first.empty() ? "" : ": " + first));
  }
  std::vector<fs::path> out;
  for (const char* ext : {".png", ".svg"}) {
    fs::path dest = prefix;
    dest += ext;
    fs::rename(work / (std::string("out") + ext), dest, ec);
    if (ec) {  // another file system: copy next to the target, then rename
      fs::path tmp = dest;
      tmp += ".tmp." + std::to_string(::getpid());
      fs::copy_file(work / (std::string("out") + ext), tmp, fs::copy_options::overwrite_existing, ec);
      if (!ec) fs::rename(tmp, dest, ec);
      if (ec) {
        fs::remove(tmp, ec);
        throw Error(dest.string() + ": cannot write: " + ec.message());
      }
    }
    out.push_back(dest);
  }
  return out;
}

// A temporary folder removed on every path out.
struct WorkDir {
  WorkDir() {
    static std::atomic<int> counter{0};
    path = fs::temp_directory_path() / ("noprop-plot-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::create_directories(path);
  }
  ~WorkDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path path;
};

void check_prefix(const fs::path& prefix) {
  std::error_code ec;
  fs::path parent = prefix.parent_path().empty() ? fs::path(".") : prefix.parent_path();
  if (!fs::is_directory(parent, ec)) throw Error(parent.string() + ": no such directory for the figures");
}

}  // namespace

std::string gnuplot_program() {
  const char* env = std::getenv("NOPROP_GNUPLOT");
  return env && *env ? env : "gnuplot";
}

std::vector<fs::path> plot_run(const RunRecord& run, const fs::path& prefix) {
  check_prefix(prefix);
  WorkDir work;
  const auto losses = run.loss_columns();
  const fs::path data = work.path / "run.dat";
  write_file_atomic(data, run_table(run, losses));
  const std::string d = quote(data.string());
  std::string body = "set multiplot layout 2,2 title " + quote(title(run)) + "\nset grid\nset key bottom right\n";
  const auto axes = x_axes({run});
  for (const auto& x : axes)
    body += x.ticks + "unset logscale y\nset xlabel " + quote(x.label) + "\nset ylabel 'test accuracy (%)'\nplot " + d +
            " using " + x.column + ":3 with linespoints pt 7 ps 0.6 title 'test accuracy'\n";
  for (const auto& x : axes) {
    body += x.ticks + "set logscale y\nset key outside right\nset xlabel " + quote(x.label) +
            "\nset ylabel 'training loss'\nplot ";
    for (std::size_t i = 0; i < losses.size(); ++i)
      body += std::string(i ? ", " : "") + d + " using " + x.column + ":" + std::to_string(4 + i) +
              " with linespoints pt 7 ps 0.4 title " + quote(losses[i].substr(5));
    if (losses.empty()) body += "NaN notitle";
    body += "\nset key bottom right\n";
  }
  body += "unset multiplot\n";
  return render(work.path, body, prefix, 2);
}

std::vector<fs::path> plot_comparison(const std::vector<RunRecord>& runs, const fs::path& prefix) {
  check_prefix(prefix);
  WorkDir work;
  std::vector<std::string> files;
  for (std::size_t i = 0; i < runs.size(); ++i) {
    const fs::path data = work.path / ("run" + std::to_string(i) + ".dat");
    write_file_atomic(data, run_table(runs[i], {}));
    files.push_back(quote(data.string()));
  }
  std::string body = "set multiplot layout 1,2 title 'test accuracy'\nset grid\nset key below\n";
  for (const auto& x : x_axes(runs)) {
    body += x.ticks + "set xlabel " + quote(x.label) + "\nset ylabel 'test accuracy (%)'\nplot ";
    for (std::size_t i = 0; i < runs.size(); ++i)
      body += std::string(i ? ", " : "") + files[i] + " using " + x.column + ":3 with linespoints pt 7 ps 0.5 title " +
              quote(runs[i].name + " (" + runs[i].method_label() + " " + runs[i].embedding_label() + ")");
    body += "\n";
  }
  body += "unset multiplot\n";
  return render(work.path, body, prefix, 1);
}

}  // namespace noprop
