#pragma once
// Runs the CUDA threads of a launch (emu_core.h's execute), all at once, each on its own host thread: by default a
// new std::thread each; with EMU_REUSE_THREADS=1 (test_tsan.py) on workers kept from launch to launch.
// ThreadSanitizer sets up every new thread, which made starting them nearly all of a TSan run's time (a step
// kernel's case took 15-35 s, 3-4 s on kept workers). Not the default: the whole emulation suite ran slower on
// kept workers in CI (801 s against 686 s; not yet explained: its largest launches leave thousands of idle
// workers). A launch takes as many idle workers as it has CUDA threads (starting more when there are too
// few), and launches from different host threads take different workers. Workers run under SCHED_BATCH: woken
// by the thousand at normal policy, they preempted the running ones (ten times the involuntary context
// switches). Hand-offs go through each worker's mutex: the caller's writes before the launch happen before every
// CUDA thread of it, and all of them before the launch returns, as with thread start and join; nothing else
// orders the CUDA threads of one launch, so TSan still reports their races.
#include <pthread.h>
#include <sched.h>

#include <condition_variable>
#include <cstddef>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace emu {

class Workers {
 public:
  // Runs task(i) for every i < n, each on its own host thread, all at once; returns when all have returned.
  void run(size_t n, const std::function<void(size_t)>& task) {
    std::vector<Worker*> mine = take(n);
    Latch done{n};
    for (size_t i = 0; i < n; ++i) {
      {
        std::lock_guard lock(mine[i]->m);
        mine[i]->task = [&task, &done, i] {
          task(i);
          done.count_down();
        };
      }
      mine[i]->cv.notify_one();  // after unlocking: a worker woken under the lock would block on it at once
    }
    done.wait();
    std::lock_guard lock(m_);
    idle_.insert(idle_.end(), mine.begin(), mine.end());
  }

 private:
  struct Worker {
    std::mutex m;
    std::condition_variable cv;
    std::function<void()> task;
  };
  struct Latch {
    size_t left;
    std::mutex m;
    std::condition_variable cv;
    void count_down() {
      std::lock_guard lock(m);
      if (--left == 0) cv.notify_all();
    }
    void wait() {
      std::unique_lock lock(m);
      cv.wait(lock, [this] { return left == 0; });
    }
  };

  // n idle workers, started where there are too few. Workers live as long as the process (never joined).
  std::vector<Worker*> take(size_t n) {
    std::lock_guard lock(m_);
    while (idle_.size() < n) {
      auto* w = new Worker;
      std::thread([w] { serve(w); }).detach();
      idle_.push_back(w);
    }
    std::vector<Worker*> mine(idle_.end() - static_cast<std::ptrdiff_t>(n), idle_.end());
    idle_.resize(idle_.size() - n);
    return mine;
  }

  static void serve(Worker* w) {
    sched_param none{};
    pthread_setschedparam(pthread_self(), SCHED_BATCH, &none);
    std::unique_lock lock(w->m);
    for (;;) {
      w->cv.wait(lock, [w] { return static_cast<bool>(w->task); });
      std::function<void()> task = std::move(w->task);
      w->task = nullptr;
      lock.unlock();
      task();
      lock.lock();
    }
  }

  std::mutex m_;
  std::vector<Worker*> idle_;
};

// The process's workers. A forked child has none of its parent's threads: it starts its own (the parent's are
// leaked there, as their state may be mid-hand-off).
inline Workers*& workers_instance() {
  static Workers* instance = [] {
    pthread_atfork(nullptr, nullptr, [] { workers_instance() = new Workers; });
    return new Workers;
  }();
  return instance;
}

// Runs task(i) for every i < n, each on its own host thread, all at once; returns when all have returned.
inline void run_at_once(size_t n, const std::function<void(size_t)>& task) {
  static const bool reuse = [] {
    const char* v = std::getenv("EMU_REUSE_THREADS");
    return v != nullptr && std::string(v) == "1";
  }();
  if (reuse) return workers_instance()->run(n, task);
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (size_t i = 0; i < n; ++i) threads.emplace_back(task, i);
  for (auto& t : threads) t.join();
}

}  // namespace emu
