/* The pod sandbox ("pause") process of the real test node.
 *
 * containerd needs a sandbox image for every pod, and no registry is reachable from the test bed,
 * so build-image.sh compiles this file statically and commits it as localhost/slm-pause. It holds
 * the pod's namespaces open: it sleeps until asked to stop, and reaps children it may inherit as
 * PID 1 of a shared PID namespace.
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) { _exit(128 + sig); }

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction term = {0}, child = {0};
    term.sa_handler = on_term;
    child.sa_handler = on_child;
    child.sa_flags = SA_NOCLDSTOP;
    if (sigaction(SIGINT, &term, NULL) < 0 || sigaction(SIGTERM, &term, NULL) < 0 ||
        sigaction(SIGCHLD, &child, NULL) < 0) {
        return 1;
    }
    for (;;) {
        pause();
    }
}
