// The /proc text parsers, driven by tables of real-looking inputs.
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "proc.h"

namespace vecseal::policy::internal {
namespace {

TEST(UnitFromCgroupTest, Table) {
  struct Case {
    std::string cgroup;
    std::string unit;
  };
  const Case cases[] = {
      {"0::/system.slice/ticket-scorer.service\n", "ticket-scorer.service"},
      {"0::/system.slice/system-getty.slice/getty@tty1.service\n", "getty@tty1.service"},
      {"0::/user.slice/user-1000.slice/session-3.scope\n", "session-3.scope"},
      // A user's own units live below user@.service; they must not pass as system units.
      {"0::/user.slice/user-1000.slice/user@1000.service/app.slice/ticket-scorer.service\n",
       "user@1000.service"},
      {"0::/system.slice/docker-abc.scope/init\n", "docker-abc.scope"},
      {"0::/\n", ""},
      {"0::/init.scope\n", "init.scope"},
      {"0::/mygroup/ticket-scorer.service\n", ""},
      {"", ""},
      // cgroup v1: only the name=systemd hierarchy counts.
      {"12:cpu,cpuacct:/system.slice/evil.service\n1:name=systemd:/system.slice/real.service\n",
       "real.service"},
      // Hybrid: the v2 line wins.
      {"1:name=systemd:/system.slice/old.service\n0::/system.slice/new.service\n", "new.service"},
  };
  for (const Case& c : cases) EXPECT_EQ(UnitFromCgroup(c.cgroup), c.unit) << c.cgroup;
}

TEST(SplitCmdlineTest, SplitsOnNul) {
  EXPECT_EQ(SplitCmdline(std::string("python3\0-u\0a b.py\0", 17)),
            (std::vector<std::string>{"python3", "-u", "a b.py"}));
  EXPECT_EQ(SplitCmdline(""), std::vector<std::string>{});
  // A process that rewrote its arguments may drop the final NUL.
  EXPECT_EQ(SplitCmdline("x"), std::vector<std::string>{"x"});
}

TEST(ScriptArgumentTest, Table) {
  struct Case {
    std::string exe;
    std::vector<std::string> argv;
    std::optional<std::string> script;
  };
  const Case cases[] = {
      {"/usr/bin/python3.11", {"python3", "/opt/etl/export.py", "--day", "1"},
       "/opt/etl/export.py"},
      {"/usr/bin/python3.11", {"python3", "-u", "-W", "ignore", "-X", "dev", "job.py"}, "job.py"},
      {"/usr/bin/python3.11", {"python3", "-c", "print(1)", "x.py"}, std::nullopt},
      {"/usr/bin/python3.11", {"python3", "-cprint(1)"}, std::nullopt},
      {"/usr/bin/python3.11", {"python3", "-m", "http.server"}, std::nullopt},
      // Clusters of short options: inline code is not a script path; a value may follow.
      {"/usr/bin/python3.11", {"python3", "-Ic", "x.py", "y.py"}, std::nullopt},
      {"/usr/bin/python3.11", {"python3", "-Im", "x"}, std::nullopt},
      {"/usr/bin/python3.11", {"python3", "-uW", "ignore", "job.py"}, "job.py"},
      {"/usr/bin/python3.11", {"python3", "-Werror", "job.py"}, "job.py"},
      {"/usr/bin/perl", {"perl", "-le", "print"}, std::nullopt},
      {"/usr/bin/perl", {"perl", "-Mfeature=say", "t.pl"}, "t.pl"},
      {"/usr/bin/ruby3.1", {"ruby", "-ne", "puts"}, std::nullopt},
      {"/usr/bin/bash", {"bash", "-ec", "echo"}, std::nullopt},
      {"/usr/bin/bash", {"bash", "-eo", "pipefail", "run.sh"}, "run.sh"},
      {"/usr/bin/python3.11", {"python3"}, std::nullopt},
      {"/usr/bin/python3.11", {"python3", "-"}, std::nullopt},
      {"/usr/bin/python3.11", {"python3", "--", "-weird.py"}, "-weird.py"},
      {"/usr/bin/python3.11 (deleted)", {"python3", "a.py"}, "a.py"},
      {"/usr/local/bin/pypy3", {"pypy3", "a.py"}, "a.py"},
      {"/usr/bin/node", {"node", "--require", "x", "server.js"}, "server.js"},
      {"/usr/bin/node", {"node", "-e", "1"}, std::nullopt},
      {"/usr/bin/perl", {"perl", "-w", "t.pl"}, "t.pl"},
      {"/usr/bin/perl", {"perl", "-e", "print"}, std::nullopt},
      {"/usr/bin/ruby3.1", {"ruby", "-I", "lib", "app.rb"}, "app.rb"},
      {"/usr/bin/bash", {"bash", "-e", "/opt/run.sh"}, "/opt/run.sh"},
      {"/usr/bin/dash", {"sh", "-c", "echo"}, std::nullopt},
      {"/usr/bin/bash", {"bash", "-o", "pipefail", "run.sh"}, "run.sh"},
      {"/usr/lib/jvm/java-17-openjdk-amd64/bin/java", {"java", "-Xmx1g", "-jar", "/opt/app.jar"},
       "/opt/app.jar"},
      {"/usr/lib/jvm/java-17-openjdk-amd64/bin/java", {"java", "-cp", "a.jar", "com.x.Main"},
       std::nullopt},
      {"/usr/bin/php8.2", {"php", "-d", "x=1", "index.php"}, "index.php"},
      // Not interpreters.
      {"/usr/bin/scorer", {"scorer", "config.py"}, std::nullopt},
      {"/usr/bin/pythonista-tool", {"pythonista-tool", "x"}, std::nullopt},
      {"", {"python3", "a.py"}, std::nullopt},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(ScriptArgument(c.exe, c.argv), c.script) << c.exe << " " << testing::PrintToString(c.argv);
  }
}

TEST(ParseStatusIdsTest, TakesEffectiveIds) {
  std::optional<StatusIds> ids = ParseStatusIds(
      "Name:\tx\nUid:\t1000\t1001\t1002\t1003\nGid:\t20\t21\t22\t23\nGroups:\t4 24 27 \n");
  ASSERT_TRUE(ids.has_value());
  EXPECT_EQ(ids->euid, 1001u);
  EXPECT_EQ(ids->egid, 21u);
  EXPECT_EQ(ids->groups, (std::vector<gid_t>{4, 24, 27}));
  EXPECT_FALSE(ParseStatusIds("Name:\tx\nUid:\t1\t2\t3\t4\n").has_value());
  EXPECT_FALSE(ParseStatusIds("Uid:\t1\t2\nGid:\t1\t2\t3\t4\n").has_value());
  EXPECT_FALSE(ParseStatusIds("Uid:\t1\tx\t3\t4\nGid:\t1\t2\t3\t4\n").has_value());
}

TEST(ParseStatTest, SurvivesHostileCommandNames) {
  // Fields 3..28 after the command name; 22 is the start time, 26 start_code, 28 start_stack.
  std::string rest =
      " S 1 1 1 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1 1 18446744073709551615 4096 "
      "8192 140000\n";
  std::optional<ProcStat> stat = ParseStat("123 (cat)" + rest);
  ASSERT_TRUE(stat.has_value());
  EXPECT_EQ(stat->start_time, 987654u);
  EXPECT_EQ(stat->start_code, 4096u);
  EXPECT_EQ(stat->start_stack, 140000u);
  stat = ParseStat("123 (a) 1 2 3 (b)" + rest);
  ASSERT_TRUE(stat.has_value());
  EXPECT_EQ(stat->start_time, 987654u);
  EXPECT_FALSE(ParseStat("123 (cat) S 1 1").has_value());
  EXPECT_FALSE(ParseStat("garbage").has_value());
}

TEST(LoaderVariableSetTest, Table) {
  EXPECT_EQ(LoaderVariableSet({"PATH=/usr/bin", "HOME=/root"}), "");
  EXPECT_EQ(LoaderVariableSet({"PATH=/usr/bin", "LD_PRELOAD=/tmp/evil.so"}), "LD_PRELOAD");
  EXPECT_EQ(LoaderVariableSet({"LD_LIBRARY_PATH="}), "LD_LIBRARY_PATH");
  EXPECT_EQ(LoaderVariableSet({"LD_AUDIT=x"}), "LD_AUDIT");
  EXPECT_EQ(LoaderVariableSet({"LD_PRELOADX=1", "XLD_PRELOAD=1", "LD_BIND_NOW=1"}), "");
  EXPECT_EQ(LoaderVariableSet({"LD_PRELOAD"}), "LD_PRELOAD");  // no '=': still the name
}

TEST(ForeignExecutableMappingTest, Table) {
  const std::string exe = "/opt/svc/bin/scorer";
  struct Case {
    std::string maps;
    std::string foreign;
  };
  const Case cases[] = {
      {"55d0c000-55d0d000 r-xp 00001000 08:01 1234 /opt/svc/bin/scorer\n"
       "7f00-7f10 r-xp 00000000 08:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
       "7f20-7f30 r-xp 00000000 08:01 98 /lib64/ld-linux-x86-64.so.2\n"
       "7f40-7f50 r-xp 00000000 00:00 0 \n"
       "7ffd-7ffe r-xp 00000000 00:00 0                          [vdso]\n"
       "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0  [vsyscall]\n",
       ""},
      // Data mappings of any file are not code.
      {"7f00-7f10 rw-p 00000000 08:01 77 /tmp/data.bin\n", ""},
      {"7f00-7f10 r-xp 00000000 08:01 77 /tmp/evil.so\n", "'/tmp/evil.so'"},
      {"7f00-7f10 r-xp 00000000 08:01 77 /usr/local/lib/libx.so\n", "'/usr/local/lib/libx.so'"},
      {"7f00-7f10 r-xp 00000000 08:01 77 /usr/libx/evil.so\n", "'/usr/libx/evil.so'"},
      {"7f00-7f10 r-xp 00000000 08:01 77 /home/u/my lib.so (deleted)\n",
       "'/home/u/my lib.so (deleted)'"},
      // Another copy of the program is not the program.
      {"7f00-7f10 r-xp 00000000 08:01 77 /opt/svc/bin/scorer.old\n", "'/opt/svc/bin/scorer.old'"},
      {"", ""},
      {"garbage\n", ""},
  };
  for (const Case& c : cases) EXPECT_EQ(ForeignExecutableMapping(c.maps, exe), c.foreign) << c.maps;
}

TEST(IsRecognisedInterpreterPathTest, Table) {
  for (const char* yes : {"/usr/bin/python3", "/usr/bin/python3.11", "/bin/python3.12"}) {
    EXPECT_TRUE(IsRecognisedInterpreterPath(yes)) << yes;
  }
  for (const char* no : {"/tmp/python3", "/usr/local/bin/python3.11", "/usr/bin/python3.",
                         "/usr/bin/python3.11x", "/usr/bin/python2.7", "/usr/bin/perl",
                         "/usr/bin/python3 (deleted)", "/home/u/usr/bin/python3", "python3"}) {
    EXPECT_FALSE(IsRecognisedInterpreterPath(no)) << no;
  }
}

TEST(PythonRunProblemTest, Table) {
  struct Case {
    std::vector<std::string> argv;
    std::vector<std::string> env;
    std::string problem;
  };
  const std::string inspect = "python runs with -i (an interactive prompt after the script)";
  const Case cases[] = {
      {{"python3", "/opt/etl/export.py"}, {"PATH=/usr/bin", "PYTHONUNBUFFERED=1"}, ""},
      {{"python3", "-u", "-I", "/opt/etl/export.py", "-i"}, {}, ""},  // the script's own -i
      {{"python3", "-W", "-i", "/opt/etl/export.py"}, {}, ""},        // -W's value
      {{"python3", "-Wi", "/opt/etl/export.py"}, {}, ""},
      {{"python3", "-X", "dev", "/opt/etl/export.py"}, {}, ""},
      {{"python3", "-i", "/opt/etl/export.py"}, {}, inspect},
      {{"python3", "-Bi", "/opt/etl/export.py"}, {}, inspect},
      {{"python3", "-u", "-i", "--", "/opt/etl/export.py"}, {}, inspect},
      {{"python3", "/opt/etl/export.py"}, {"PYTHONPATH=/tmp"}, "the environment sets PYTHONPATH"},
      {{"python3", "/opt/etl/export.py"}, {"PYTHONSTARTUP=/tmp/s.py"},
       "the environment sets PYTHONSTARTUP"},
      {{"python3", "/opt/etl/export.py"}, {"PYTHONHOME=/tmp"}, "the environment sets PYTHONHOME"},
      {{"python3", "/opt/etl/export.py"}, {"PYTHONINSPECT=1"}, "the environment sets PYTHONINSPECT"},
      {{"python3", "/opt/etl/export.py"}, {"PYTHONUSERBASE=/tmp"},
       "the environment sets PYTHONUSERBASE"},
      {{"python3", "/opt/etl/export.py"}, {"PYTHONBREAKPOINT=os.system"},
       "the environment sets PYTHONBREAKPOINT"},
      {{"python3", "/opt/etl/export.py"}, {"PYTHONSAFEPATH=1", "PYTHONNOUSERSITE=1"}, ""},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(PythonRunProblem(c.argv, c.env), c.problem) << testing::PrintToString(c.argv);
  }
}

}  // namespace
}  // namespace vecseal::policy::internal
