// libpq's client API; pkg-config's libpq adds its include directory.
#include <libpq-fe.h>
